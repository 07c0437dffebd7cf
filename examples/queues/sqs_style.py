#!/usr/bin/env python3
"""The boto3 SQS send / receive / delete example on Mote's HTTP API, with httpx."""
import argparse

import httpx

p = argparse.ArgumentParser()
p.add_argument("--http", default="http://127.0.0.1:8083")
p.add_argument("--queue", default="hello")
p.add_argument("--count", type=int, default=5)
args = p.parse_args()

sqs = httpx.Client(base_url=f"{args.http}/api/v1/queues/{args.queue}", timeout=30)

for i in range(args.count):  # sqs.send_message(QueueUrl=..., MessageBody=...)
    r = sqs.post("/messages", json={"body": f"Hello {i}"}).raise_for_status()
    print(f"Sent message {r.json()['id']}")

done = 0
while done < args.count:  # sqs.receive_message(MaxNumberOfMessages=10, WaitTimeSeconds=20)
    r = sqs.post("/receive", json={"max_messages": 10, "wait_seconds": 20}).raise_for_status()
    for message in r.json()["messages"]:
        sqs.delete(f"/messages/{message['receipt']}").raise_for_status()  # sqs.delete_message
        print(f"Received and deleted message: {message['body']}")
        done += 1
