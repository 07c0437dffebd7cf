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


@app.task(bind=True, max_retries=2)
def flaky(self, token):
    """Fails its first two tries; Celery retries it a second later each time (the retry is
    held by Mote as a delayed publish), and the third try succeeds."""
    record("try", token, self.request.retries, f"{time.time():.3f}")
    if self.request.retries < 2:
        raise self.retry(countdown=1)
    record("done", token)


@app.task(bind=True, max_retries=1)
def hopeless(self, token):
    """Always fails: one retry, then Celery gives up (MaxRetriesExceededError)."""
    record("try", token, self.request.retries, f"{time.time():.3f}")
    raise self.retry(countdown=1)
