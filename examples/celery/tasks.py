"""The Celery tutorial's tasks.py ("First steps with Celery"), on Mote.

    python3 -m pip install ./python                 # once, from the repository root
    celery -A tasks worker --loglevel=INFO          # from this directory
    python3 -c 'from tasks import add; add.delay(4, 4)'

Nothing here imports the transport: the installed package makes kombu resolve mote://.
"""
from celery import Celery

app = Celery('tasks', broker='mote://127.0.0.1:1883//')
app.conf.task_acks_late = True  # ack (PUBACK) after the task: a killed worker's task runs again
app.conf.worker_prefetch_multiplier = 1  # a worker process holds one task at a time


@app.task
def add(x, y):
    return x + y
