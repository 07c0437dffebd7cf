#!/usr/bin/env python3
"""RabbitMQ's tutorial 2 new_task.py on Mote: enqueue one job on $queue/task_queue."""
import argparse

import paho.mqtt.client as mqtt

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, default=1883)
p.add_argument("words", nargs="*")
args = p.parse_args()
message = " ".join(args.words) or "Hello World!"

client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.connect(args.host, args.port)
client.loop_start()
client.publish("$queue/task_queue", message, qos=1).wait_for_publish(10)  # PUBACK: it is durable
client.disconnect()
client.loop_stop()
print(f" [x] Sent {message}")
