#!/usr/bin/env python3
"""Publisher backpressure at the brokers' DEFAULTS: a fan-in burst that outruns its one
subscriber, side by side in one invocation, alternating.

Scenario: 8 publishers, one topic each, QoS 0, 64-byte payloads, as fast as the broker
takes them (COUNT each) -> 1 subscriber of `load/#` (mqtt-load, benches/load). Every run
starts a fresh broker and stops it after. Configurations:

  mote            `mote --memory`, defaults (publisher_backpressure_ms = 5000)
  mote[bp=off]    the same with `[mqtt] publisher_backpressure_ms = 0` (before it existed)
  mosquitto       `mosquitto` with its defaults (`user root`, as root must, and
                  `allow_anonymous true`, which a listener line otherwise turns off)

Reported per configuration: median delivered msgs/s over the rounds, median loss (messages
the subscriber never got), and the ratio to mote. A throughput with losses is not a
throughput: the loss is printed next to it.

Run:  python3 benches/backpressure_bench.py [--reps 5] [--count 300000]
Needs: target/release/mote and target/release/mqtt-load (cargo build --release -p
mote-broker -p mote-load); mosquitto (apt-get install mosquitto) for its column.
"""
import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, secs=10):
    end = time.time() + secs
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def start(cfg, port, tmp, mote):
    if cfg == "mosquitto":
        conf = os.path.join(tmp, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nuser root\nallow_anonymous true\n")
        cmd = ["mosquitto", "-c", conf]
    else:
        cmd = [mote, "--memory", "--mqtt", f"127.0.0.1:{port}", "--log", "warn"]
        if cfg == "mote[bp=off]":
            conf = os.path.join(tmp, "off.toml")
            with open(conf, "w") as f:
                f.write("[mqtt]\npublisher_backpressure_ms = 0\n")
            cmd += ["--config", conf]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_port(port):
        p.kill()
        p.wait()
        raise SystemExit(f"{cfg} did not start")
    return p


def run(load, port, count, timeout):
    cmd = [load, "--broker", f"127.0.0.1:{port}", "--qos", "0", "--publishers", "8",
           "--subscribers", "1", "--topic-per-publisher", "--size", "64", "--count", str(count)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout
    m = re.search(r"^delivery:\s+(\d+) msg/s\s+\((\d+) received, (\d+) expected per subscriber, (\d+) lost", out, re.M)
    if not m:
        raise SystemExit(f"unexpected mqtt-load output:\n{out}")
    rate, received, expected, lost = (int(g) for g in m.groups())
    return {"rate": rate, "received": received, "expected": expected, "lost": lost}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--count", type=int, default=300000, help="messages per publisher")
    ap.add_argument("--mote", default=os.path.join(ROOT, "target/release/mote"))
    ap.add_argument("--load", default=os.path.join(ROOT, "target/release/mqtt-load"))
    ap.add_argument("--timeout", type=int, default=300)
    a = ap.parse_args()
    cfgs = ["mote", "mote[bp=off]"] + (["mosquitto"] if shutil.which("mosquitto") else [])
    results = {c: [] for c in cfgs}
    tmp = tempfile.mkdtemp(prefix="mote-bp-bench-")
    try:
        for rep in range(a.reps):
            order = cfgs if rep % 2 == 0 else list(reversed(cfgs))
            for cfg in order:
                port = free_port()
                p = start(cfg, port, tmp, a.mote)
                try:
                    r = run(a.load, port, a.count, a.timeout)
                finally:
                    p.terminate()
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
                results[cfg].append(r)
                print(f"round {rep + 1} {cfg:<14} {r['rate']:>9} msg/s delivered, {r['lost']} lost of {r['expected']}",
                      file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(r["rate"] for r in results["mote"])
    print(f"\nfan-in QoS 0, 8 -> 1, {a.count} per publisher, defaults; medians of {a.reps} rounds\n")
    print("| broker | delivered msgs/s | lost (median of runs) | runs with loss | mote / this |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for cfg in cfgs:
        rate = statistics.median(r["rate"] for r in results[cfg])
        lost = statistics.median(r["lost"] for r in results[cfg])
        lossy = sum(1 for r in results[cfg] if r["lost"] > 0)
        exp = results[cfg][0]["expected"]
        print(f"| {cfg} | {rate:,.0f} | {lost:,.0f} of {exp:,} ({100 * lost / exp:.0f} %) | {lossy}/{len(results[cfg])} "
              f"| {base / rate:.2f}x |")


if __name__ == "__main__":
    main()
