#!/usr/bin/env python3
"""kafka-python's producer hello-world on Mote: append to the stream $stream/test_topic.

    python3 producer.py                         # appends b'Hello, Kafka!'
    python3 producer.py 'Hello again' 'and again'
    python3 producer.py --key k3 'order 17'     # Kafka's key=: the topic $stream/test_topic/k3

The broker is MOTE_HOST:MOTE_PORT (default 127.0.0.1:1883), or --host/--port.
"""
import argparse
import os
import sys

import paho.mqtt.client as mqtt

p = argparse.ArgumentParser()
p.add_argument("--host", default=os.environ.get("MOTE_HOST", "127.0.0.1"))
p.add_argument("--port", type=int, default=int(os.environ.get("MOTE_PORT", "1883")))
p.add_argument("--stream", default="test_topic", help="the stream (Kafka's topic)")
p.add_argument("--key", help="Kafka's message key: appended as $stream/NAME/KEY (the key orders a group)")
p.add_argument("values", nargs="*", default=["Hello, Kafka!"])
args = p.parse_args()

# from kafka import KafkaProducer
# producer = KafkaProducer(bootstrap_servers='localhost:9092')
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.connect(args.host, args.port)
client.loop_start()

failed = []


def on_publish(client, userdata, mid, reason_code, properties):
    if reason_code.is_failure:  # e.g. 0x10 when the stream does not exist (auto_create = false)
        failed.append(f"mid {mid}: {reason_code}")


client.on_publish = on_publish

topic = f"$stream/{args.stream}" + (f"/{args.key}" if args.key else "")
infos = []
for value in args.values:
    # producer.send('test_topic', b'Hello, Kafka!')          (key=b'k3': the topic's /k3)
    infos.append(client.publish(topic, value.encode(), qos=1))  # QoS 1: PUBACK once durable
# producer.flush()
for info in infos:
    info.wait_for_publish(10)
client.disconnect()
client.loop_stop()
if failed or not all(i.is_published() for i in infos):
    sys.exit(f"not appended: {failed or 'no PUBACK within 10 s'}")
for value in args.values:
    print(f"Sent to {args.stream}: {value}")
