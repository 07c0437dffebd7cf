"""A persistent subscriber for the crash test: connects with a fixed client id and
clean session 0, optionally subscribes, prints every payload it receives (one per
line, `MSG <qos> <payload>`), and exits once nothing has arrived for --idle seconds.
Prints `SESSION <0|1>` with the CONNACK's session-present flag first.
"""

import argparse
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--id", required=True)
p.add_argument("--qos", type=int, choices=[0, 1, 2], default=1)
p.add_argument("--subscribe", default=None)
p.add_argument("--idle", type=float, default=2.0)
p.add_argument("--timeout", type=float, default=30.0)
a = p.parse_args()

client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=a.id, clean_session=False, protocol=mqtt.MQTTv311)
last = time.monotonic()
ready = False


def on_connect(c, _u, flags, _rc, _props):
    global ready
    sys.stdout.write(f"SESSION {int(flags.session_present)}\n")
    sys.stdout.flush()
    if a.subscribe:
        c.subscribe(a.subscribe, qos=a.qos)
    else:
        ready = True


def on_subscribe(_c, _u, _mid, _codes, _props):
    global ready
    ready = True


def on_message(_c, _u, msg):
    global last
    last = time.monotonic()
    sys.stdout.write(f"MSG {msg.qos} {msg.payload.decode()}\n")
    sys.stdout.flush()


client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect("127.0.0.1", a.port, keepalive=30)
client.loop_start()
start = time.monotonic()
while time.monotonic() - start < a.timeout:
    if ready and time.monotonic() - last > a.idle:
        break
    if not ready:
        last = time.monotonic()
    time.sleep(0.05)
client.disconnect()
client.loop_stop()
sys.stdout.write("DONE\n")
