#!/usr/bin/env python3
"""The `rq worker` of this example: takes jobs from $queue/resize, publishes each result
as a retained message on jobs/results/<id>, and only then acknowledges the job.

    python3 worker.py --host 127.0.0.1 --port 1883 --work-ms 200

Order of a job: the work; the result PUBLISH (QoS 1, retained, expiring after
RESULT_TTL); its PUBACK (the result is durable); then the job's PUBACK (done). A worker
that dies anywhere before that last step leaves the job to another worker, which does it
again and publishes the same result once more: at least once, so the job is idempotent.
"""
import argparse
import json
import os
import time
from pathlib import PurePosixPath

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

QUEUE = "$queue/resize"
RESULT_TTL = 500  # s, as RQ's default result_ttl; app.py assumes the same

p = argparse.ArgumentParser()
p.add_argument("--host", default=os.environ.get("MOTE_HOST", "127.0.0.1"))
p.add_argument("--port", type=int, default=int(os.environ.get("MOTE_PORT", "1883")))
p.add_argument("--work-ms", type=int, default=200, help="how long a job takes")
args = p.parse_args()

# Result PUBLISH packet id -> (job id, job packet id, job QoS): the jobs to acknowledge once
# their result is durable. Only the network thread touches it (loop_forever).
pending = {}


def resize(image: str, width: int) -> str:
    """The "work": the name a real worker would give the thumbnail it writes."""
    time.sleep(args.work_ms / 1000)
    path = PurePosixPath(image)
    return str(path.with_name(f"{path.stem}_w{width}{path.suffix or '.png'}"))


def on_connect(client, userdata, flags, reason_code, properties):
    if reason_code.is_failure:
        raise SystemExit(f"connection refused: {reason_code}")
    client.subscribe(QUEUE, qos=1)


def on_subscribe(client, userdata, mid, reason_codes, properties):
    if reason_codes[0].is_failure:
        raise SystemExit(f"subscribe refused: {reason_codes[0]}")
    print(f"worker {os.getpid()}: waiting for jobs on {QUEUE}", flush=True)


def on_message(client, userdata, msg):
    user = dict(getattr(msg.properties, "UserProperty", None) or [])
    deliveries = int(user.get("mote-delivery-count", 1))
    try:
        job = json.loads(msg.payload)
        job_id, image, width = job["id"], job["image"], int(job["width"])
    except (ValueError, KeyError, TypeError):
        print(f"dropped a malformed job: {msg.payload[:100]!r}", flush=True)
        client.ack(msg.mid, msg.qos)  # (a v5 PUBACK 0x99 would dead-letter it; paho sends 0)
        return
    print(f"took {job_id} (delivery {deliveries})", flush=True)
    # Runs on paho's network thread: fine for jobs well under the keep-alive (60 s);
    # longer ones belong in a thread, with $queue/$touch to extend the visibility timeout.
    result = {"id": job_id, "status": "finished", "thumbnail": resize(image, width),
              "worker": os.getpid(), "deliveries": deliveries}
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = RESULT_TTL
    info = client.publish(f"jobs/results/{job_id}", json.dumps(result), qos=1, retain=True,
                          properties=props)
    # Its PUBACK is read by this same thread, after this callback: no race.
    pending[info.mid] = (job_id, msg.mid, msg.qos)


def on_publish(client, userdata, mid, reason_code, properties):
    job_id, job_mid, job_qos = pending.pop(mid)
    if reason_code.is_failure:  # the result was refused: leave the job to be done again
        print(f"result of {job_id} refused ({reason_code}); job not acknowledged", flush=True)
        return
    client.ack(job_mid, job_qos)  # the job's PUBACK: done
    print(f"done {job_id}", flush=True)


client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.manual_ack_set(True)  # PUBACK a job only when client.ack() says so
client.on_connect, client.on_subscribe = on_connect, on_subscribe
client.on_message, client.on_publish = on_message, on_publish
connect = Properties(PacketTypes.CONNECT)
connect.ReceiveMaximum = 1  # hold one job at a time (RQ's worker also does one at a time)
client.connect(args.host, args.port, properties=connect)
try:
    client.loop_forever()
except KeyboardInterrupt:
    pass
