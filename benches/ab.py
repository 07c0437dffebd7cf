#!/usr/bin/env python3
"""Two or more mote builds side by side: the A/B behind a change's figures (issue #15).

Each build runs as `mote --memory` with compare.py's settings, pinned with `taskset` to
--cpus and with --threads worker threads (cores.py's `PinnedMote`), its HTTP listener on
for `/metrics`; `mqtt-load` (not pinned) drives it through compare.py's scenarios. Every
measurement starts a fresh broker. Within a round the builds take turns per scenario,
in an order reversed from one round to the next. Reported per scenario and build: the
median delivered msg/s over the rounds (min–max), its ratio to the first build's, the
messages lost (a run that lost any is not a throughput: its figure is flagged), the
broker's CPU seconds and the share of them spent holding the core's lock
(`mote_core_lock_held_seconds_total`).

Usage (from the repository root), e.g. the commit before a change against the tree:
    cargo build --release -p mote-broker -p mote-load
    git worktree add /tmp/base BASE && cargo build --release -p mote-broker \\
        --manifest-path /tmp/base/Cargo.toml --target-dir /tmp/base/target
    flock /tmp/mote-bench.lock python3 benches/ab.py \\
        --builds base=/tmp/base/target/release/mote new=target/release/mote \\
        [--rounds 6] [--scenarios fanin fanout fanout-large pairs] [--cpus 0] [--threads 1]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import ROOT, measure, raise_nofile, reap_all, scenarios  # noqa: E402
from cores import PinnedMote  # noqa: E402


def build(spec, cpus, threads):
    """`LABEL=PATH`, or a path whose file name is the label."""
    label, _, path = spec.rpartition("=")
    return PinnedMote(label or os.path.basename(path), path, cpus, threads)


def table(results, names, keys):
    out = ["| scenario | build | delivered msg/s, median (min–max) | ratio to "
           f"{names[0]} | lost | broker CPU s | lock ÷ broker CPU |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for key in keys:
        base = None
        for n in names:
            rs = [r for r in results if r["scenario"] == key and r["broker"] == n]
            if not rs:
                continue
            v = [r["value"] for r in rs]
            med = statistics.median(v)
            base = med if base is None else base
            lost = sum(r["lost"] or 0 for r in rs)
            cpu = statistics.median(r["broker_cpu_secs"] for r in rs)
            shares = [r["counters"]["lock_held_secs"] / r["broker_cpu_secs"]
                      for r in rs if r.get("counters") and r["broker_cpu_secs"] > 0]
            share = f"{statistics.median(shares):.0%}" if shares else "–"
            flag = "" if lost == 0 else " **(lost: not a throughput)**"
            out.append(f"| {key} | {n} | {med:,.0f} ({min(v):,.0f}–{max(v):,.0f}){flag} | "
                       f"{med / base:.2f} | {lost} | {cpu:.2f} | {share} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", nargs="+", required=True, metavar="LABEL=PATH",
                    help="mote binaries; the first is the one the others are compared with")
    ap.add_argument("--load", default=os.path.join(ROOT, "target", "release", "mqtt-load"))
    ap.add_argument("--scenarios", nargs="+", default=["fanin", "fanout", "pairs"],
                    choices=["fanin", "fanout", "fanout-large", "pairs"])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--cpus", default="0", help="taskset CPU list for the broker")
    ap.add_argument("--threads", type=int, default=1, help="the broker's worker threads")
    ap.add_argument("--fanin-count", type=int, default=300000)
    ap.add_argument("--fanout-count", type=int, default=150000)
    ap.add_argument("--pairs-count", type=int, default=50000)
    ap.add_argument("--large-size", type=int, default=16384)
    ap.add_argument("--large-count", type=int, default=20000)
    ap.add_argument("--max-foreign", type=float, default=0.15)
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--retry-wait", type=float, default=10)
    ap.add_argument("--run-timeout", type=int, default=300)
    ap.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "mote-ab"))
    ap.add_argument("--out", help="raw JSON results")
    a = ap.parse_args()
    # What compare.py's scenarios() reads and these runs do not use.
    a.rate, a.latency_secs, a.idle = 10000, 10, 0
    a.wide_small = a.wide_large = a.wide_count = 0
    raise_nofile()
    os.makedirs(a.work_dir, exist_ok=True)
    motes = [build(s, a.cpus, a.threads) for s in a.builds]
    names = [m.name for m in motes]
    if len(set(names)) != len(names):
        ap.error("two builds with one label: give them LABEL=PATH")
    scs = scenarios(a)
    results = []
    try:
        for rnd in range(a.rounds):
            for sc in scs:
                for m in (motes if rnd % 2 == 0 else motes[::-1]):
                    r = measure(a, m, sc, rnd, a.work_dir)
                    results.append(r)
                    print(f"round {rnd} {sc.key} {m.name}: {r['value']:,.0f} msg/s, lost {r['lost']}, "
                          f"broker CPU {r['broker_cpu_secs']} s", flush=True)
    finally:
        reap_all()
    print()
    print(f"command: {' '.join(sys.argv)}")
    print(f"broker on CPUs {a.cpus}, {a.threads} worker thread(s); {a.rounds} rounds\n")
    print(table(results, names, [sc.key for sc in scs]))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"command": sys.argv, "settings": vars(a), "runs": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
