#!/usr/bin/env python3
"""Crash safety side by side: Mote (on-disk store, --fsync always) and Mosquitto
(persistence true), same scenario, same clients, one invocation.

Scenario per broker and round: two persistent subscribers (QoS 1 and QoS 2, clean
session 0) subscribe and go offline; two paho-mqtt publishers send COUNT QoS 1 and COUNT
QoS 2 messages; the broker is killed with SIGKILL at a pseudo-random point; the broker is
restarted on the same data; the subscribers reconnect and collect what is delivered. A
message is *lost* when the publisher saw its PUBACK/PUBCOMP and a subscriber never
received it; a QoS 2 *duplicate* is a QoS 2 message the QoS 2 subscriber received twice.

Usage (from the repository root, after `cargo build --release -p mote-broker`):
    python3 benches/crash_compare.py [--rounds 3] [--count 3000]
"""

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, "tests", "python")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"broker on {port} did not start")


class Mote:
    name = "mote --fsync always"

    def __init__(self, data):
        self.data = data

    def start(self, port):
        exe = os.path.join(ROOT, "target", "release", "mote")
        cfg = os.path.join(self.data, "mote.toml")
        with open(cfg, "w") as f:
            f.write("[mqtt]\nmax_queued_messages = 1000000\n")
        p = subprocess.Popen([exe, "--data-dir", os.path.join(self.data, "store"), "--mqtt", f"127.0.0.1:{port}",
                              "--config", cfg, "--log", "warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        return p


class Mosquitto:
    name = "mosquitto (persistence true)"

    def __init__(self, data):
        self.data = data

    def start(self, port):
        cfg = os.path.join(self.data, "mosquitto.conf")
        with open(cfg, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\n"
                    f"persistence_location {self.data}/\nmax_queued_messages 1000000\nmax_inflight_messages 20\n")
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        p = subprocess.Popen([exe, "-c", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        return p


def kill(p):
    p.kill()
    p.wait()


def run_sub(port, cid, qos, subscribe=None, idle=3.0):
    args = [sys.executable, os.path.join(PY, "crash_sub.py"), "--port", str(port), "--id", cid, "--qos", str(qos),
            "--idle", str(idle), "--timeout", "120"]
    if subscribe:
        args += ["--subscribe", subscribe]
    out = subprocess.run(args, capture_output=True, text=True, timeout=150).stdout
    return [line.split(" ", 2)[2] for line in out.splitlines() if line.startswith("MSG ")]


def round_(broker_cls, count, seed):
    data = tempfile.mkdtemp(prefix="crash-compare-")
    try:
        b = broker_cls(data)
        port = free_port()
        p = b.start(port)
        run_sub(port, "cc-s1", 1, "crash/#", idle=0.3)
        run_sub(port, "cc-s2", 2, "crash/#", idle=0.3)
        pubs = [subprocess.Popen([sys.executable, os.path.join(PY, "crash_pub.py"), "--port", str(port), "--qos", str(q),
                                  "--prefix", f"q{q}", "--count", str(count), "--topic", f"crash/{q}", "--timeout", "60"],
                                 stdout=subprocess.PIPE, text=True) for q in (1, 2)]
        time.sleep(random.Random(seed).uniform(0.3, 1.2))
        kill(p)
        acked = {}
        for q, pub in zip((1, 2), pubs):
            out, _ = pub.communicate(timeout=90)
            acked[q] = {f"q{q}-{line[4:]}" for line in out.splitlines() if line.startswith("ACK ")}
        p = b.start(port)
        got1 = run_sub(port, "cc-s1", 1)
        got2 = run_sub(port, "cc-s2", 2)
        kill(p)
        all_acked = acked[1] | acked[2]
        lost1 = len(all_acked - set(got1))
        lost2 = len(all_acked - set(got2))
        dup2 = sum(1 for m in acked[2] if got2.count(m) > 1)
        return len(acked[1]), len(acked[2]), lost1, lost2, dup2
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=3000)
    a = ap.parse_args()
    print(f"| broker | round | acked QoS 1 | acked QoS 2 | lost at QoS 1 sub | lost at QoS 2 sub | QoS 2 duplicates |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    totals = {}
    for cls in (Mote, Mosquitto):
        for r in range(a.rounds):
            res = round_(cls, a.count, seed=r)
            t = totals.setdefault(cls.name, [0, 0, 0, 0, 0])
            for i, v in enumerate(res):
                t[i] += v
            print(f"| {cls.name} | {r} | " + " | ".join(str(v) for v in res) + " |", flush=True)
    for name, t in totals.items():
        print(f"| **{name}** | all | " + " | ".join(f"**{v}**" for v in t) + " |")


if __name__ == "__main__":
    main()
