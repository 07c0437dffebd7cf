"""An RQ-style job queue on Mote: a FastAPI handler enqueues, worker.py does the job.

    MOTE_HOST=127.0.0.1 MOTE_PORT=1883 uvicorn app:app --port 8000

- ``POST /resize`` {"image": "cat.png", "width": 200} enqueues a job: a QoS 1 PUBLISH
  of {"id", "image", "width"} to ``$queue/resize``. Mote sends the PUBACK once the job
  is journaled, and only then does the handler answer 202 {"id": ...}: a 202 means the
  job survives a broker crash. A refused job (MQTT 5 PUBACK reason 0x80 or more, e.g.
  0x97 when the queue is full) or no PUBACK within 10 s gives 503.
- ``GET /jobs/{id}``: the result a worker published, or {"status": "queued"}.

Results: worker.py publishes each result as a *retained* QoS 1 message on
``jobs/results/<id>`` with a Message Expiry Interval of ``RESULT_TTL`` seconds (RQ's
``result_ttl``, 500 s by default), so the broker keeps the latest result per job for
that long and then deletes it. This app's one MQTT client subscribes to
``jobs/results/+``: the broker sends it every result still retained when it
(re)subscribes and each new one as it comes, and it keeps them in ``results``.
"""

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager

import paho.mqtt.client as mqtt
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

MOTE_HOST = os.environ.get("MOTE_HOST", "127.0.0.1")
MOTE_PORT = int(os.environ.get("MOTE_PORT", "1883"))
QUEUE = "$queue/resize"
RESULTS = "jobs/results/+"
RESULT_TTL = 500  # s; the worker publishes results with this Message Expiry Interval
MAX_RESULTS = 10_000

log = logging.getLogger("uvicorn.error")

# Job id -> (expires at, result): a local copy of the results the broker retains, so a
# GET costs no round trip, and a bounded one. An entry expires when the broker's copy
# does (the remaining Message Expiry Interval comes with each message) and is dropped
# when read then; past MAX_RESULTS the oldest entries go (their jobs then read as
# "queued": raise it or lower RESULT_TTL if more than that many finish per TTL).
results: "OrderedDict[str, tuple[float, dict]]" = OrderedDict()
results_lock = threading.Lock()
# PUBACK reason code per packet id, written by on_publish before paho marks the message
# published, so a handler whose wait_for_publish returned finds its code here.
pubacks: dict = {}
subscribed = threading.Event()


def on_connect(client, userdata, flags, reason_code, properties):
    if reason_code.is_failure:
        log.warning("Mote refused the connection: %s", reason_code)
        return
    client.subscribe(RESULTS, qos=1)  # again on every reconnect: retained results come again


def on_subscribe(client, userdata, mid, reason_codes, properties):
    if reason_codes[0].is_failure:
        log.warning("subscribe %s refused: %s", RESULTS, reason_codes[0])
    else:
        subscribed.set()


def on_disconnect(client, userdata, flags, reason_code, properties):
    subscribed.clear()
    log.warning("disconnected from Mote (%s); paho reconnects", reason_code)


def on_message(client, userdata, msg):
    if not msg.payload:  # an empty retained message deletes a result
        return
    try:
        result = json.loads(msg.payload)
    except ValueError:
        log.warning("skipped a result on %s that is not JSON", msg.topic)
        return
    job_id = msg.topic.rsplit("/", 1)[-1]
    ttl = getattr(msg.properties, "MessageExpiryInterval", RESULT_TTL)
    with results_lock:
        results[job_id] = (time.monotonic() + ttl, result)
        results.move_to_end(job_id)
        while len(results) > MAX_RESULTS:
            results.popitem(last=False)


def on_publish(client, userdata, mid, reason_code, properties):
    pubacks[mid] = reason_code


def make_client() -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect, client.on_subscribe, client.on_disconnect = on_connect, on_subscribe, on_disconnect
    client.on_message, client.on_publish = on_message, on_publish
    client.reconnect_delay_set(1, 5)
    return client


@asynccontextmanager
async def lifespan(app: FastAPI):
    client = make_client()
    client.connect_async(MOTE_HOST, MOTE_PORT)
    client.loop_start()
    try:
        # Serve only once results can arrive (as an app waits for its database).
        if not await asyncio.to_thread(subscribed.wait, 10):
            raise RuntimeError(f"no MQTT connection to {MOTE_HOST}:{MOTE_PORT}")
        app.state.mqtt = client
        yield
    finally:
        client.disconnect()
        client.loop_stop()


app = FastAPI(title="Mote jobs", lifespan=lifespan)


class Resize(BaseModel):
    image: str = Field(min_length=1)
    width: int = Field(gt=0)


@app.post("/resize", status_code=202)
async def resize(req: Resize):
    client: mqtt.Client = app.state.mqtt
    if not client.is_connected():
        raise HTTPException(503, "not connected to the broker")
    job = {"id": uuid.uuid4().hex, "image": req.image, "width": req.width}
    info = client.publish(QUEUE, json.dumps(job), qos=1)
    try:
        # Off the event loop: other requests go on while this one waits for its PUBACK.
        await asyncio.to_thread(info.wait_for_publish, 10)
    except (ValueError, RuntimeError) as e:
        raise HTTPException(503, f"job not enqueued: {e}")
    if not info.is_published():
        # No PUBACK in time. paho may still deliver it, so the job may run: at least once.
        raise HTTPException(503, "job not acknowledged by the broker in time")
    reason = pubacks.pop(info.mid, None)
    if reason is not None and reason.is_failure:  # e.g. 0x97 Quota exceeded: a full queue
        raise HTTPException(503, f"job refused by the broker: {reason} (0x{reason.value:02x})")
    return {"id": job["id"]}


@app.get("/jobs/{job_id}")
async def job(job_id: str):
    with results_lock:
        got = results.get(job_id)
        if got and time.monotonic() > got[0]:
            del results[job_id]
            got = None
    if got is None:
        # Not done yet, or its result expired: RQ also forgets a result after result_ttl.
        return JSONResponse({"id": job_id, "status": "queued"})
    return got[1]
