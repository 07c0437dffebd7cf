#!/usr/bin/env python3
"""kafka-python's consumer hello-world on Mote: replay $stream/test_topic from the start.

Prints `test_topic:OFFSET: VALUE` for every message, as the Kafka tutorial prints
`message.topic:message.offset: message.value`. Reading never deletes: run it twice, it
prints the same lines twice (and then what is appended while it runs).

    python3 consumer.py                       # until Ctrl+C
    python3 consumer.py --timeout-ms 2000     # Kafka's consumer_timeout_ms: stop after 2 s idle
    python3 consumer.py --offset latest       # auto_offset_reset='latest'; or an offset: --offset 5

The broker is MOTE_HOST:MOTE_PORT (default 127.0.0.1:1883), or --host/--port.
"""
import argparse
import os
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

p = argparse.ArgumentParser()
p.add_argument("--host", default=os.environ.get("MOTE_HOST", "127.0.0.1"))
p.add_argument("--port", type=int, default=int(os.environ.get("MOTE_PORT", "1883")))
p.add_argument("--stream", default="test_topic", help="the stream (Kafka's topic)")
p.add_argument("--offset", default="earliest", help="earliest, latest, an offset or @UNIX_MS")
p.add_argument("--timeout-ms", type=int, default=0, help="stop after this long without a message (0: never)")
args = p.parse_args()

last_message = time.monotonic()
subscribed = False
errors = []


def on_connect(client, userdata, flags, reason_code, properties):
    if reason_code.is_failure:
        errors.append(f"connect refused: {reason_code}")
        client.disconnect()
        return
    # KafkaConsumer('test_topic', auto_offset_reset='earliest')
    start = Properties(PacketTypes.SUBSCRIBE)
    start.UserProperty = ("stream-offset", args.offset)
    client.subscribe(f"$stream/{args.stream}", options=SubscribeOptions(qos=1), properties=start)


def on_subscribe(client, userdata, mid, reason_codes, properties):
    global last_message, subscribed
    last_message, subscribed = time.monotonic(), True  # --timeout-ms counts from here
    if reason_codes[0].is_failure:
        errors.append(f"subscribe refused: {reason_codes[0]}")
        client.disconnect()


def on_message(client, userdata, msg):
    global last_message
    last_message = time.monotonic()
    props = dict(getattr(msg.properties, "UserProperty", []))  # mote-offset, mote-timestamp
    # for message in consumer:
    #     print(f"{message.topic}:{message.offset}: {message.value.decode('utf-8')}")
    print(f"{args.stream}:{props['mote-offset']}: {msg.payload.decode('utf-8')}", flush=True)


client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
client.connect(args.host, args.port, clean_start=True)  # no session: each run replays anew
try:
    if args.timeout_ms:
        client.loop_start()
        while not errors and (time.monotonic() - last_message < args.timeout_ms / 1000 or not subscribed):
            if not subscribed and time.monotonic() - last_message > 10:
                errors.append("no SUBACK within 10 s")
            time.sleep(0.05)
        client.disconnect()
        client.loop_stop()
    else:
        client.loop_forever()
except KeyboardInterrupt:
    pass
if errors:
    sys.exit("; ".join(errors))
