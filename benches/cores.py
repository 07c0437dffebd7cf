#!/usr/bin/env python3
"""Mote on 1 core and on 2 (issue #15's scaling goal): the same build, pinned with
`taskset`, its worker threads set to match, driven by the same `mqtt-load` runs as
compare.py (its scenarios, settings and loss accounting).

Variants
  1 core             taskset -c 0,    worker_threads = 1
  2 cores, 1 thread  taskset -c 0,1,  worker_threads = 1 (the default)
  2 cores, 2 threads taskset -c 0,1,  worker_threads = 2 (arrival tickets on)

The load generator is not pinned: on a 2-core machine it shares the broker's cores in
the 2-core variants and has a core of its own in the 1-core one, so this machine cannot
show what a broker with cores of its own would do; the figures say what it does here.
Rounds interleave the variants, their order reversed each round.

How far any broker could scale here: with `b` the broker's CPU seconds per message and `l`
the load generator's, one core delivers at most 1/b (the load has the other core), two
cores shared with the load at most 2/(b + l), so 2 cores ÷ 1 core ≤ 2 / (1 + l/b). The
last table prints that ceiling from each scenario's 1-core runs. `--peers` runs
nats-server (QoS 0 scenarios) and rumqttd pinned the same way, for what brokers built
for many cores reach under the same harness.

Around each run it also reads mote's `mote_core_lock_held_seconds_total` (from `/metrics`;
the HTTP listener is on for that): the share of the broker's CPU spent under the core's
one lock is the part a second thread cannot do in parallel (Amdahl's serial fraction).

Usage (from the repository root):
    cargo build --release -p mote-broker -p mote-load
    flock /tmp/mote-bench.lock python3 benches/cores.py [--rounds 3] [--peers] [--out FILE]
"""

import argparse
import datetime
import json
import os
import statistics
import re
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (ROOT, Mote, Nats, Rumqttd, find_exe, fmt_val, free_port,  # noqa: E402
                     interrupt_on_signals, measure, raise_nofile, reap_all, scenarios, sh, wait_port)


class PinnedMote(Mote):
    """`mote --memory` with compare.py's settings, on `cpus`, with `threads` workers, and
    its HTTP listener on for `/metrics` (the core's lock time, `counters`)."""

    def __init__(self, name, exe, cpus, threads):
        super().__init__(name, exe)
        self.cpus, self.threads = cpus, threads
        self.CONFIG = Mote.CONFIG.replace("[mqtt]\n", f"[mqtt]\nworker_threads = {threads}\n", 1)
        self.http = None

    def command(self, port, run_dir):
        self.http = free_port()
        self.CONFIG = re.sub(r"\n\[http\]\nlisten = .*\n", "\n", self.CONFIG) + \
            f'\n[http]\nlisten = "127.0.0.1:{self.http}"\n'
        return ["taskset", "-c", self.cpus] + super().command(port, run_dir)

    def counters(self):
        """Seconds the core's lock was held since start (`mote_core_lock_held_seconds_total`)."""
        wait_port(self.http, self.proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search(r"^mote_core_lock_held_seconds_total (\S+)$", text, re.M)
        return {"lock_held_secs": float(m.group(1))} if m else {}


def pinned(kind, name, exe, cpus):
    """A peer broker of compare.py's `kind`, started under `taskset -c cpus`."""
    class Pinned(kind):
        def command(self, port, run_dir):
            return ["taskset", "-c", cpus] + super().command(port, run_dir)
    return Pinned(name, exe)


def held_of(rec):
    """Seconds the core's lock was held during the run, if read."""
    held = (rec.get("counters") or {}).get("lock_held_secs")
    return None if held is None else round(held, 3)


VARIANTS = [("1 core", "0", 1), ("2 cores, 1 thread", "0,1", 1), ("2 cores, 2 threads", "0,1", 2)]
# Each broker's variants to compare: (1 core, 2 cores).
SCALING = {"mote": ("1 core", "2 cores, 2 threads"),
           "nats-server": ("nats-server, 1 core", "nats-server, 2 cores"),
           "rumqttd": ("rumqttd, 1 core", "rumqttd, 2 cores")}


def main():
    interrupt_on_signals()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mote", default=os.path.join(ROOT, "target", "release", "mote"))
    ap.add_argument("--load", default=os.path.join(ROOT, "target", "release", "mqtt-load"))
    ap.add_argument("--scenarios", nargs="+", default=["fanin", "fanout", "pairs"],
                    choices=["fanin", "fanout", "pairs"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peers", action="store_true",
                    help="also nats-server (QoS 0 scenarios) and rumqttd, on 1 core and on 2")
    ap.add_argument("--rumqttd", default=find_exe(os.path.join(ROOT, "target", "peers", "bin", "rumqttd"), "rumqttd"))
    ap.add_argument("--nats-server", default=find_exe("nats-server", "/usr/sbin/nats-server"))
    ap.add_argument("--fanin-count", type=int, default=300000)
    ap.add_argument("--fanout-count", type=int, default=150000)
    ap.add_argument("--pairs-count", type=int, default=50000)
    ap.add_argument("--max-foreign", type=float, default=0.15)
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--retry-wait", type=float, default=10)
    ap.add_argument("--run-timeout", type=int, default=300)
    ap.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "mote-cores"))
    ap.add_argument("--out")
    a = ap.parse_args()
    # What compare.py's scenarios() reads and these runs do not use.
    a.rate, a.latency_secs, a.idle = 10000, 10, 0
    a.wide_small = a.wide_large = a.wide_count = 0
    a.large_size = a.large_count = 0

    raise_nofile()
    os.makedirs(a.work_dir, exist_ok=True)
    variants = [PinnedMote(label, a.mote, cpus, threads) for label, cpus, threads in VARIANTS]
    if a.peers:
        for kind, key, exe in ((Nats, "nats-server", a.nats_server), (Rumqttd, "rumqttd", a.rumqttd)):
            if not exe or not os.path.exists(exe):
                print(f"{key}: not found, not run")
                continue
            variants += [pinned(kind, name, exe, cpus) for name, cpus in zip(SCALING[key], ("0", "0,1"))]
    scs = scenarios(a)
    command = "python3 benches/cores.py " + " ".join(sys.argv[1:])
    commit = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    print(f"command: {command}\n  mote commit: {commit}\n  machine: {os.cpu_count()} cores")
    results = []
    try:
        for rnd in range(a.rounds):
            order = variants if rnd % 2 == 0 else list(reversed(variants))
            for sc in scs:
                for v in order:
                    if sc.mqtt_only and v.proto != "mqtt":
                        continue
                    rec = measure(a, v, sc, rnd, a.work_dir)
                    results.append(rec)
                    print(f"round {rnd + 1}/{a.rounds}  {sc.key:<7} {v.name:<20} {fmt_val(rec['value'], sc.unit):>8}"
                          f"  lost {rec['lost']:,}  (broker CPU {rec['broker_cpu_secs']} s, load CPU "
                          f"{rec['load_cpu_secs']} s, core lock held {held_of(rec)} s, "
                          f"other {max(0.0, rec['foreign_cpu']):.0%})"
                          + (f"  problems: {rec['problems']}" if rec.get("problems") else ""), flush=True)
    finally:
        reap_all()

    scaled = [k for k, (one, two) in SCALING.items() if any(v.name == one for v in variants)]
    print("\n| scenario | " + " | ".join(v.name for v in variants) + " | "
          + " | ".join(f"{k}: 2 cores ÷ 1 core" for k in scaled) + " |")
    print("|---|" + "---:|" * (len(variants) + len(scaled)))
    for sc in scs:
        meds, cells = {}, []
        for v in variants:
            runs = [r for r in results if r["scenario"] == sc.key and r["broker"] == v.name]
            if not runs:
                meds[v.name] = None
                cells.append("–")
                continue
            vals = [r["value"] for r in runs if r["value"] is not None and not r.get("failed")]
            lost = sum(r["lost"] for r in runs)
            meds[v.name] = statistics.median(vals) if vals else None
            cell = fmt_val(meds[v.name], sc.unit) + f" · {lost:,} lost"
            if len(vals) < len(runs):
                cell += f" · {len(runs) - len(vals)} failed"
            cells.append(cell)
        ratios = []
        for k in scaled:
            one, two = (meds.get(n) for n in SCALING[k])
            ratios.append(f"{two / one:.2f}" if one and two else "–")
        print(f"| {sc.label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")

    # The ceiling this machine puts on 2 cores ÷ 1 core for a broker whose work per message
    # stays what it is on one core: 2 / (1 + l/b), from each broker's 1-core runs.
    print("\n| scenario | " + " | ".join(f"{k}: load CPU ÷ broker CPU on 1 core, ceiling" for k in scaled) + " |")
    print("|---|" + "---:|" * len(scaled))
    for sc in scs:
        cells = []
        for k in scaled:
            runs = [r for r in results if r["scenario"] == sc.key and r["broker"] == SCALING[k][0]
                    and r["broker_cpu_secs"] and r["load_cpu_secs"] is not None and not r.get("failed")]
            if not runs:
                cells.append("–")
                continue
            share = statistics.median(r["load_cpu_secs"] / r["broker_cpu_secs"] for r in runs)
            cells.append(f"{share:.2f}, {2 / (1 + share):.2f}")
        print(f"| {sc.label} | " + " | ".join(cells) + " |")

    # Amdahl's serial part: the share of the broker's CPU spent under the core's one lock
    # (what a second thread cannot do in parallel), and of the run's time the lock was busy.
    motes = [v for v in variants if isinstance(v, PinnedMote)]
    print("\n| scenario | " + " | ".join(f"{v.name}: lock ÷ broker CPU, ÷ run" for v in motes) + " |")
    print("|---|" + "---:|" * len(motes))
    for sc in scs:
        cells = []
        for v in motes:
            runs = [r for r in results if r["scenario"] == sc.key and r["broker"] == v.name
                    and held_of(r) is not None and r["broker_cpu_secs"] and r["secs"]]
            if not runs:
                cells.append("–")
                continue
            cpu = statistics.median(held_of(r) / r["broker_cpu_secs"] for r in runs)
            run = statistics.median(held_of(r) / r["secs"] for r in runs)
            cells.append(f"{cpu:.0%}, {run:.0%}")
        print(f"| {sc.label} | " + " | ".join(cells) + " |")

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = a.out or os.path.join(a.work_dir, f"cores-{stamp}.json")
    with open(out, "w") as f:
        json.dump({"command": command, "commit": commit, "runs": results}, f, indent=1)
    print(f"\nraw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
