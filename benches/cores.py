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

Around each run it also reads mote's `mote_core_lock_held_seconds_total` (from `/metrics`;
the HTTP listener is on for that): the share of the broker's CPU spent under the core's
one lock is the part a second thread cannot do in parallel (Amdahl's serial fraction).

Usage (from the repository root):
    cargo build --release -p mote-broker -p mote-load
    flock /tmp/mote-bench.lock python3 benches/cores.py [--rounds 3] [--out FILE]
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
from compare import (ROOT, Mote, fmt_val, free_port, interrupt_on_signals, measure,  # noqa: E402
                     raise_nofile, reap_all, scenarios, sh, wait_port)


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


def held_of(rec):
    """Seconds the core's lock was held during the run, if read."""
    held = (rec.get("counters") or {}).get("lock_held_secs")
    return None if held is None else round(held, 3)


VARIANTS = [("1 core", "0", 1), ("2 cores, 1 thread", "0,1", 1), ("2 cores, 2 threads", "0,1", 2)]


def main():
    interrupt_on_signals()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mote", default=os.path.join(ROOT, "target", "release", "mote"))
    ap.add_argument("--load", default=os.path.join(ROOT, "target", "release", "mqtt-load"))
    ap.add_argument("--scenarios", nargs="+", default=["fanin", "fanout", "pairs"],
                    choices=["fanin", "fanout", "pairs"])
    ap.add_argument("--rounds", type=int, default=3)
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

    raise_nofile()
    os.makedirs(a.work_dir, exist_ok=True)
    variants = [PinnedMote(label, a.mote, cpus, threads) for label, cpus, threads in VARIANTS]
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
                    rec = measure(a, v, sc, rnd, a.work_dir)
                    results.append(rec)
                    print(f"round {rnd + 1}/{a.rounds}  {sc.key:<7} {v.name:<20} {fmt_val(rec['value'], sc.unit):>8}"
                          f"  lost {rec['lost']:,}  (broker CPU {rec['broker_cpu_secs']} s, load CPU "
                          f"{rec['load_cpu_secs']} s, core lock held {held_of(rec)} s, "
                          f"other {max(0.0, rec['foreign_cpu']):.0%})"
                          + (f"  problems: {rec['problems']}" if rec.get("problems") else ""), flush=True)
    finally:
        reap_all()

    print("\n| scenario | " + " | ".join(v.name for v in variants) + " | 2 cores, 2 threads ÷ 1 core |")
    print("|---|" + "---:|" * (len(variants) + 1))
    for sc in scs:
        meds, cells = {}, []
        for v in variants:
            runs = [r for r in results if r["scenario"] == sc.key and r["broker"] == v.name]
            vals = [r["value"] for r in runs if r["value"] is not None and not r.get("failed")]
            lost = sum(r["lost"] for r in runs)
            meds[v.name] = statistics.median(vals) if vals else None
            cell = fmt_val(meds[v.name], sc.unit) + f" · {lost:,} lost"
            if len(vals) < len(runs):
                cell += f" · {len(runs) - len(vals)} failed"
            cells.append(cell)
        one, two = meds["1 core"], meds["2 cores, 2 threads"]
        ratio = f"{two / one:.2f}" if one and two else "–"
        print(f"| {sc.label} | " + " | ".join(cells) + f" | {ratio} |")

    # Amdahl's serial part: the share of the broker's CPU spent under the core's one lock
    # (what a second thread cannot do in parallel), and of the run's time the lock was busy.
    print("\n| scenario | " + " | ".join(f"{v.name}: lock ÷ broker CPU, ÷ run" for v in variants) + " |")
    print("|---|" + "---:|" * len(variants))
    for sc in scs:
        cells = []
        for v in variants:
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
