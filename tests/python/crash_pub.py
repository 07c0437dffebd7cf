"""Publishes COUNT messages and prints `ACK <i>` for each one the broker acknowledged
(PUBACK for QoS 1, PUBCOMP for QoS 2). Used by the crash test: the broker is killed
while this runs, and every acknowledged message must survive.

Exits when every message is acknowledged, when the connection drops, or at --timeout.
"""

import argparse
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--qos", type=int, choices=[1, 2], required=True)
p.add_argument("--count", type=int, default=2000)
p.add_argument("--topic", default="crash/x")
p.add_argument("--prefix", required=True)
p.add_argument("--inflight", type=int, default=50)
p.add_argument("--timeout", type=float, default=20.0)
a = p.parse_args()

client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{a.prefix}-pub", protocol=mqtt.MQTTv311)
client.max_inflight_messages_set(a.inflight)
client.max_queued_messages_set(0)
by_mid = {}
acked = 0
lost = False


def on_publish(_c, _u, mid, _rc, _props):
    global acked
    i = by_mid.pop(mid, None)
    if i is not None:
        acked += 1
        sys.stdout.write(f"ACK {i}\n")
        sys.stdout.flush()


def on_disconnect(_c, _u, _flags, _rc, _props):
    global lost
    lost = True


client.on_publish = on_publish
client.on_disconnect = on_disconnect
try:
    client.connect("127.0.0.1", a.port, keepalive=30)
except OSError as e:
    sys.stdout.write(f"DONE acked=0 lost=True connect={e}\n")
    sys.exit(0)
client.loop_start()
deadline = time.monotonic() + a.timeout
for i in range(a.count):
    if lost or time.monotonic() > deadline:
        break
    while len(by_mid) >= a.inflight and not lost and time.monotonic() < deadline:
        time.sleep(0.0005)
    info = client.publish(a.topic, f"{a.prefix}-{i}".encode(), qos=a.qos)
    if info.rc != mqtt.MQTT_ERR_SUCCESS:
        break
    by_mid[info.mid] = i
while by_mid and not lost and time.monotonic() < deadline:
    time.sleep(0.01)
client.loop_stop()
sys.stdout.write(f"DONE acked={acked} lost={lost}\n")
