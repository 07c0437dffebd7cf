#!/usr/bin/env python3
"""A member of a consumer group reading a stream: Kafka's group_id, on Mote.

    python3 group_consumer.py --group billing --member a     # in two terminals: a, b
    python3 producer.py --key k1 'order 1' 'order 2'           # key k1: one member, in order

Members of one group share the stream's messages: each message goes to one member, and
the messages of one key (the topic after `$stream/NAME/`) to the same member, in offset
order. A message is acknowledged (PUBACK, manual) only once processed: the group's
committed position is kept by the broker, so a member or broker restart resumes there,
and what a stopped member had received but not acknowledged goes to another member.

Prints one line per message, `MEMBER OFFSET KEY VALUE`, on standard output, and
`[*] ...` status lines on standard error. The broker is MOTE_HOST:MOTE_PORT (default
127.0.0.1:1883), or --host/--port. SIGTERM or Ctrl+C leaves the group.
"""
import argparse
import os
import signal
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
p.add_argument("--group", default="my-group", help="Kafka's group_id")
p.add_argument("--member", default=str(os.getpid()), help="this member's name (printed, and in its client id)")
p.add_argument("--offset", default="earliest", help="where a new group starts (auto_offset_reset)")
p.add_argument("--prefetch", type=int, default=10, help="messages unacknowledged at most (Receive Maximum)")
p.add_argument("--work-ms", type=float, default=0, help="processing time per message")
args = p.parse_args()

prefix = f"$stream/{args.stream}/"
topic_filter = f"$share/{args.group}/$stream/{args.stream}"


def status(text):
    print(f"[*] {args.member}: {text}", file=sys.stderr, flush=True)


def on_connect(client, userdata, flags, reason_code, properties):
    if reason_code.is_failure:
        status(f"connect refused: {reason_code}")
        return
    # KafkaConsumer('test_topic', group_id='my-group', auto_offset_reset='earliest',
    #               enable_auto_commit=False)
    start = Properties(PacketTypes.SUBSCRIBE)
    start.UserProperty = ("stream-offset", args.offset)  # only when the group is new
    client.subscribe(topic_filter, options=SubscribeOptions(qos=1), properties=start)


def on_subscribe(client, userdata, mid, reason_codes, properties):
    if reason_codes[0].is_failure:
        status(f"subscribe refused: {reason_codes[0]}")
        client.disconnect()
        return
    status(f"joined {topic_filter}")


def on_disconnect(client, userdata, flags, reason_code, properties):
    status(f"disconnected: {reason_code}")


def on_message(client, userdata, msg):
    # for message in consumer:
    offset = dict(getattr(msg.properties, "UserProperty", [])).get("mote-offset", "?")
    key = msg.topic[len(prefix):] if msg.topic.startswith(prefix) else msg.topic
    time.sleep(args.work_ms / 1000)  # process(message)
    print(f"{args.member} {offset} {key or '-'} {msg.payload.decode(errors='replace')}", flush=True)
    client.ack(msg.mid, msg.qos)  # consumer.commit(): the PUBACK, only now


def stop(signum, frame):
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, stop)
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{args.group}-{args.member}",
                     protocol=mqtt.MQTTv5)
client.manual_ack_set(True)
client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
client.on_disconnect = on_disconnect
client.reconnect_delay_set(min_delay=1, max_delay=2)  # a broker restart: back within ~2 s
prefetch = Properties(PacketTypes.CONNECT)
prefetch.ReceiveMaximum = args.prefetch  # Kafka's max_poll_records, roughly
client.connect_async(args.host, args.port, clean_start=True, properties=prefetch)
try:
    client.loop_forever(retry_first_connection=True)
except KeyboardInterrupt:
    client.disconnect()  # leaves the group: what was not acknowledged goes to the others
