"""Tasks test_celery.py runs besides tasks.add: each line they write goes to the file
named by $CELERY_EXAMPLE_RECORD (one per worker), so the test sees what ran where."""
import os
import time

from celery.exceptions import Reject

from tasks import app


def record(*words) -> None:
    with open(os.environ["CELERY_EXAMPLE_RECORD"], "a") as f:
        f.write(" ".join(map(str, words)) + "\n")


@app.task(bind=True)
def slow(self, token, seconds):
    record("start", token, f"redelivered={bool(self.request.delivery_info.get('redelivered'))}")
    time.sleep(seconds)
    record("done", token)


@app.task(bind=True)
def refuse_once(self, token):
    """Refused (requeued) on its first delivery, done on the next."""
    if not self.request.delivery_info.get("redelivered"):
        record("refused", token)
        raise Reject("first delivery", requeue=True)
    record("done", token)
