#!/usr/bin/env python3
"""RabbitMQ's tutorial 2 worker.py on Mote: take jobs from $queue/task_queue, ack when done."""
import argparse
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, default=1883)
args = p.parse_args()


def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe("$queue/task_queue", qos=1)


def on_subscribe(client, userdata, mid, reason_codes, properties):
    if reason_codes[0].is_failure:
        raise SystemExit(f"subscribe refused: {reason_codes[0]}")
    print(" [*] Waiting for messages. To exit press CTRL+C", flush=True)


def on_message(client, userdata, msg):
    body = msg.payload.decode()
    print(f" [x] Received {body}", flush=True)
    time.sleep(0.1 * body.count("."))
    client.ack(msg.mid, msg.qos)  # PUBACK only now: a worker that dies leaves the job to another
    print(f" [x] Done {body}", flush=True)


client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
prefetch = Properties(PacketTypes.CONNECT)
prefetch.ReceiveMaximum = 1  # basic_qos(prefetch_count=1): one job at a time
client.connect(args.host, args.port, properties=prefetch)
try:
    client.loop_forever()
except KeyboardInterrupt:
    pass
