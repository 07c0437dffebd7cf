#!/usr/bin/env python3
"""Does a compaction of the store stall durable acknowledgements? Builds side by side.

Each run starts `mote --data-dir D --fsync always` (a fresh directory) and:

1. fills two persistent offline sessions with `mqtt-load` (benches/load): C gets
   4 x 100,000 QoS 1 messages, A 3 x 100,000 (the log grows past the compaction
   threshold, but the live state is too large for a compaction to be worth it);
2. starts a probe: a paho-mqtt publisher at a fixed 500 QoS 1 messages/s to a topic
   with a persistent subscriber online, so every PUBACK waits for the journal's fsync;
   the probe records each PUBACK's latency (publish -> PUBACK) and its send time;
3. after 6 s drains C (its deliveries and acknowledgements), which makes most of the
   log garbage: the broker compacts (a snapshot of A's queue, ~27 MB, replaces the old
   segments, which are then deleted);
4. reports the probe's p99.9 and max over its 16 s, and the worst latency of the
   PUBACKs sent from the drain's start to 0.5 s after the broker logged
   `compacted the store` (the compaction window; it includes the drain's own load).

Binaries take turns (`--mote LABEL=PATH`, repeated), `--runs` each, every run under the
shared benchmark lock (`flock /tmp/mote-bench.lock` around the whole script is the
caller's job). Reports the median (min-max) per binary. Loopback only, random ports,
every child reaped by PID.

    python3 benches/compaction_stall.py --mote old=/tmp/mote-old --mote new=target/release/mote
"""

import argparse
import datetime
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "[mqtt]\nmax_queued_messages = 2000000\n"


def probe(port, secs, rate):
    """Publishes at `rate`/s for `secs`; returns [(send time, PUBACK latency s)]."""
    import paho.mqtt.client as mqtt

    v2 = mqtt.CallbackAPIVersion.VERSION2
    sub = mqtt.Client(v2, client_id="probe-sub", clean_session=False)
    sub.connect("127.0.0.1", port)
    sub.subscribe("probe/t", 1)
    sub.loop_start()
    time.sleep(0.5)
    pub = mqtt.Client(v2, client_id="probe-pub")
    sent, acks = {}, {}
    pub.on_publish = lambda c, u, mid, rc, props: acks.__setitem__(mid, time.time())
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    time.sleep(0.3)
    t0, n = time.time(), 0
    while time.time() - t0 < secs:
        wait = t0 + n / rate - time.time()
        if wait > 0:
            time.sleep(wait)
        t = time.time()
        info = pub.publish("probe/t", b"x" * 64, qos=1)
        sent[info.mid] = t
        n += 1
    time.sleep(1)
    pub.loop_stop()
    sub.loop_stop()
    pub.disconnect()
    sub.disconnect()
    missing = sum(1 for m in sent if m not in acks)
    return [(t, acks[m] - t) for m, t in sent.items() if m in acks], n, missing


def load(bin_load, port, *args):
    subprocess.run([bin_load, "--broker", f"127.0.0.1:{port}", "--qos", "1", "--persistent",
                    "--topic-per-publisher", "--subscribers", "1", *args],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300, check=False)


def one_run(mote, bin_load, work):
    port = random.randint(20000, 40000)
    data = os.path.join(work, "data")
    shutil.rmtree(data, ignore_errors=True)
    cfg = os.path.join(work, "mote.toml")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    log = open(os.path.join(work, "log"), "w")
    broker = subprocess.Popen([mote, "--data-dir", data, "--mqtt", f"127.0.0.1:{port}",
                               "--config", cfg, "--fsync", "always", "--log", "info"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(1)
        load(bin_load, port, "--publishers", "4", "--offline-subs", "--count", "100000",
             "--client-prefix", "cc", "--topic-prefix", "cc", "--inflight", "256")
        load(bin_load, port, "--publishers", "3", "--offline-subs", "--count", "100000",
             "--client-prefix", "aa", "--topic-prefix", "aa", "--inflight", "256")
        result = {}
        th = threading.Thread(target=lambda: result.update(r=probe(port, 16, 500)))
        th.start()
        time.sleep(6)
        drain_at = time.time()
        load(bin_load, port, "--publishers", "4", "--drain-only", "--count", "100000",
             "--client-prefix", "cc", "--topic-prefix", "cc")
        th.join(60)
    finally:
        broker.send_signal(signal.SIGTERM)
        try:
            broker.wait(30)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()
        log.close()
    samples, sent, missing = result.get("r", ([], 0, -1))
    done = []
    with open(os.path.join(work, "log")) as f:
        for line in f:
            if "compacted the store" in line:
                stamp = line.split()[0][:26]
                done.append(datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f")
                            .replace(tzinfo=datetime.timezone.utc).timestamp())
    lat = sorted(l for _, l in samples)
    after = [d for d in done if d >= drain_at - 1]
    window = [l for t, l in samples if after and drain_at <= t <= after[0] + 0.5]
    return {
        "sent": sent, "unacked": missing,
        "p999_ms": lat[int(0.999 * (len(lat) - 1))] * 1000 if lat else None,
        "max_ms": lat[-1] * 1000 if lat else None,
        "compactions": len(after),
        "window_worst_ms": max(window) * 1000 if window else None,
    }


def fmt(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mote", action="append", required=True, help="LABEL=PATH, repeated")
    ap.add_argument("--load", default=os.path.join(ROOT, "target/release/mqtt-load"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    motes = [m.split("=", 1) for m in a.mote]
    results = {label: [] for label, _ in motes}
    work = tempfile.mkdtemp(prefix="mote-compaction-stall-")
    try:
        for i in range(a.runs):
            order = motes if i % 2 == 0 else motes[::-1]
            for label, path in order:
                r = one_run(path, a.load, work)
                results[label].append(r)
                print(f"run {i + 1} {label}: {json.dumps(r)}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| build | compaction window worst ms | p99.9 ms | max ms | unacked |")
    print("|---|---:|---:|---:|---:|")
    for label, _ in motes:
        rs = results[label]
        print(f"| {label} | {fmt([r['window_worst_ms'] for r in rs])} | {fmt([r['p999_ms'] for r in rs])} "
              f"| {fmt([r['max_ms'] for r in rs])} | {sum(max(r['unacked'], 0) for r in rs)} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
