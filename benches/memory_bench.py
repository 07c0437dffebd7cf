#!/usr/bin/env python3
"""Memory and recovery with 1,000,000 queued messages (issue 5).

One persistent QoS 1 subscriber (clean session 0) subscribes and goes offline;
`mqtt-load` publishes N (default 1,000,000) QoS 1 messages of 100 bytes into mote with
its on-disk store (a fresh data dir on disk, --fsync always unless told otherwise).
The broker's RSS (/proc/PID/status VmRSS, every 50 ms) is sampled before, during and
after publishing. Then SIGTERM, restart on the same data dir, and the time from spawn
to the `listening mqtt=` line is the time to be ready with N messages queued on disk;
RSS is sampled after recovery. Finally the subscriber reconnects and drains, and the
run checks that all N distinct messages arrived.

Config: [mqtt] max_queued_messages = 2000000, max_queued_bytes = 4294967296, and, when
the broker knows the key (`mote --print-config` shows it), [storage]
queue_memory_bytes = BUDGET (the global memory budget for queued deliveries; beyond it
they wait on disk only). Without the key the budget is reported as not in force.

Usage (from the repository root):
    cargo build --release -p mote-broker -p mote-load
    python3 benches/memory_bench.py [--messages 1000000] [--budget 67108864] [--out FILE]
"""

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from broker_bench import (ROOT, MoteProc, fs_type, interrupt_on_signals,  # noqa: E402
                          machine_info, run_load)


def rss_kib(pid):
    """(VmRSS, VmHWM) of `pid` in KiB, or (None, None) once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None, None
    vals = {}
    for key in ("VmRSS", "VmHWM"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        vals[key] = int(m.group(1)) if m else None
    return vals["VmRSS"], vals["VmHWM"]


class Sampler:
    """Samples a process's RSS every `interval` seconds on a thread, tagged by phase."""

    def __init__(self, pid, interval=0.05):
        self.pid, self.interval = pid, interval
        self.samples = []  # (t, phase, rss_kib)
        self.phase = "start"
        self.t0 = time.monotonic()
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_flag.is_set():
            rss, _ = rss_kib(self.pid)
            if rss is None:
                return
            self.samples.append((round(time.monotonic() - self.t0, 3), self.phase, rss))
            time.sleep(self.interval)

    def stop(self):
        self.stop_flag.set()
        self.thread.join()

    def peak(self, phase=None):
        vals = [s[2] for s in self.samples if phase is None or s[1] == phase]
        return max(vals) if vals else None

    def last(self, phase=None):
        vals = [s[2] for s in self.samples if phase is None or s[1] == phase]
        return vals[-1] if vals else None


def du_bytes(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


def mib(kib_or_none, unit="KiB"):
    if kib_or_none is None:
        return "–"
    v = kib_or_none / 1024 if unit == "KiB" else kib_or_none / (1024 * 1024)
    return f"{v:,.1f} MiB"


def main():
    interrupt_on_signals()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mote", default=os.path.join(ROOT, "target", "release", "mote"))
    ap.add_argument("--load", default=os.path.join(ROOT, "target", "release", "mqtt-load"))
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--publishers", type=int, default=8, help="messages are split evenly among them")
    ap.add_argument("--size", type=int, default=100, help="payload bytes")
    ap.add_argument("--inflight", type=int, default=64, help="QoS 1 window per publisher")
    ap.add_argument("--fsync", default="always")
    ap.add_argument("--budget", type=int, default=64 * 1024 * 1024,
                    help="storage.queue_memory_bytes, when the broker knows the key")
    ap.add_argument("--rss-budget", type=int, default=0,
                    help="storage.memory_budget_bytes (target for the whole process's RSS; 0 = not set)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds to sample after publishing")
    ap.add_argument("--work-dir", default="/var/tmp/mote-memory-bench", help="data dir parent (a disk, not tmpfs)")
    ap.add_argument("--keep", action="store_true", help="keep the data dir afterwards")
    ap.add_argument("--out", default=None, help="raw JSON [default: WORK_DIR/memory_bench-DATE.json]")
    a = ap.parse_args()

    if a.messages % a.publishers:
        sys.exit("--messages must be a multiple of --publishers")
    per_pub = a.messages // a.publishers
    for exe in (a.mote, a.load):
        if not os.access(exe, os.X_OK):
            sys.exit(f"not executable: {exe} (build with `cargo build --release -p mote-broker -p mote-load`)")
    os.makedirs(a.work_dir, exist_ok=True)
    fstype = fs_type(a.work_dir)
    if fstype in ("tmpfs", "ramfs"):
        sys.exit(f"--work-dir {a.work_dir} is on {fstype}; the store must be on a disk")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = a.out or os.path.join(a.work_dir, f"memory_bench-{stamp}.json")
    run_dir = os.path.join(a.work_dir, f"run-{stamp}")
    data_dir = os.path.join(run_dir, "data")
    os.makedirs(run_dir)
    command = "python3 benches/memory_bench.py " + " ".join(sys.argv[1:])

    printed = subprocess.run([a.mote, "--print-config"], capture_output=True, text=True).stdout
    budget_supported = re.search(r"^\s*queue_memory_bytes\s*=", printed, re.M) is not None
    cfg_text = "[mqtt]\nmax_queued_messages = 2000000\nmax_queued_bytes = 4294967296\n"
    if budget_supported:
        cfg_text += f"\n[storage]\nqueue_memory_bytes = {a.budget}\n"
        if a.rss_budget:
            cfg_text += f"memory_budget_bytes = {a.rss_budget}\n"
    cfg = os.path.join(run_dir, "mote.toml")
    with open(cfg, "w") as f:
        f.write(cfg_text)
    mote_args = ["--mqtt", "127.0.0.1:0", "--data-dir", data_dir, "--fsync", a.fsync, "--config", cfg,
                 "--log", "info"]

    info = machine_info(a.mote, a.load, None)
    info["work_dir"] = f"{a.work_dir} ({fstype})"
    print(f"command: {command}")
    for k, v in info.items():
        if v:
            print(f"  {k}: {v}")
    print(f"  queue memory budget: {'storage.queue_memory_bytes = %d (%s)' % (a.budget, mib(a.budget, 'B')) if budget_supported else 'NOT in force (the broker has no storage.queue_memory_bytes)'}")
    print(flush=True)

    load_common = ["--publishers", str(a.publishers), "--subscribers", "1", "--qos", "1", "--size", str(a.size),
                   "--inflight", str(a.inflight), "--count", str(per_pub), "--persistent",
                   "--client-prefix", "membench", "--topic-prefix", "membench"]
    res = {"command": command, "machine": info, "settings": vars(a), "config": cfg_text,
           "budget_in_force": budget_supported}
    procs = []
    try:
        # Phase 1: publish into an offline persistent session.
        m1 = MoteProc(a.mote, mote_args)
        procs.append(m1)
        addr = m1.wait_ready(60)
        s1 = Sampler(m1.proc.pid)
        time.sleep(0.5)
        s1.phase = "publish"
        t = time.monotonic()
        rc, rep, err = run_load(a.load, addr, load_common + ["--offline-subs"], 1800)
        res["publish_wall_secs"] = round(time.monotonic() - t, 2)
        res["publish"] = {"rc": rc, "report": rep, "stderr": err[-2000:]}
        print(f"publish: rc {rc}, {json.dumps((rep or {}).get('publish'))}", flush=True)
        if rep and rep.get("problems"):
            print("  problems:", rep["problems"])
        s1.phase = "after"
        time.sleep(a.settle)
        _, hwm1 = rss_kib(m1.proc.pid)
        s1.stop()
        res["rss_kib"] = {"idle_before": s1.last("start"), "peak_publish": s1.peak("publish"),
                          "peak_after": s1.peak("after"), "after_settle": s1.last("after"), "vmhwm": hwm1}
        res["data_dir_bytes_before_shutdown"] = du_bytes(data_dir)
        secs, killed = m1.stop(120)
        res["shutdown_secs"] = round(secs, 3)
        res["shutdown_killed"] = killed
        res["log_phase1"] = m1.lines[-30:]
        res["data_dir_bytes"] = du_bytes(data_dir)
        print(f"shutdown: {secs:.2f} s{' (SIGKILL needed)' if killed else ''}; data dir {mib(res['data_dir_bytes'], 'B')}",
              flush=True)

        # Phase 2: restart on the same data dir; time to ready.
        m2 = MoteProc(a.mote, mote_args)
        procs.append(m2)
        s2 = Sampler(m2.proc.pid)
        s2.phase = "recovering"
        addr = m2.wait_ready(1800)
        ready = m2.ready_at - m2.started
        res["ready_secs"] = round(ready, 3)
        s2.phase = "recovered"
        recovered = [ln for ln in m2.lines if "store recovered" in ln]
        res["recovery_log"] = recovered[-1] if recovered else None
        print(f"restart: ready after {ready:.2f} s; {res['recovery_log']}", flush=True)
        time.sleep(2.0)

        # Phase 3: drain and verify.
        s2.phase = "drain"
        t = time.monotonic()
        rc, rep, err = run_load(a.load, addr, load_common + ["--drain-only", "--settle", "30"], 1800)
        res["drain_wall_secs"] = round(time.monotonic() - t, 2)
        res["drain"] = {"rc": rc, "report": rep, "stderr": err[-2000:]}
        d = (rep or {}).get("delivery") or {}
        print(f"drain: rc {rc}, {json.dumps(d)}", flush=True)
        if rep and rep.get("problems"):
            print("  problems:", rep["problems"])
        s2.phase = "drained"
        time.sleep(2.0)
        _, hwm2 = rss_kib(m2.proc.pid)
        s2.stop()
        res["rss_kib"].update(peak_recovering=s2.peak("recovering"), after_recovery=s2.last("recovered"), peak_recovered_idle=s2.peak("recovered"),
                              peak_drain=s2.peak("drain"), after_drain=s2.last("drained"), vmhwm_restart=hwm2)
        secs2, killed2 = m2.stop(120)
        res["shutdown2_secs"] = round(secs2, 3)
        res["log_phase2"] = m2.lines[-30:]
        res["samples_publish"] = s1.samples[::4]
        res["samples_restart"] = s2.samples[::4]
        res["valid"] = bool(rc == 0 and d.get("received") == a.messages and d.get("lost") == 0)
    finally:
        for p in procs:
            p.stop(30)
        if not a.keep:
            shutil.rmtree(run_dir, ignore_errors=True)

    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)

    r = res["rss_kib"]
    pub = (res["publish"]["report"] or {}).get("publish") or {}
    d = (res["drain"]["report"] or {}).get("delivery") or {}
    budget = f"{mib(a.budget, 'B')} (storage.queue_memory_bytes)" if budget_supported else "not in force (key unknown to this broker)"
    if budget_supported and a.rss_budget:
        budget += f"; resident memory budget {mib(a.rss_budget, 'B')} (storage.memory_budget_bytes)"
    lines = [
        f"| quantity | value |",
        f"|---|---:|",
        f"| messages queued (QoS 1, {a.size} B payload, 1 offline persistent subscriber) | {a.messages:,} |",
        f"| queue memory budget | {budget} |",
        f"| publish rate, acknowledged (--fsync {a.fsync}, {a.publishers} publishers × {a.inflight} in flight) | {pub.get('msgs_per_sec', 0):,.0f} msg/s |",
        f"| RSS idle before publishing | {mib(r['idle_before'])} |",
        f"| **peak RSS while publishing** | **{mib(r['peak_publish'])}** |",
        f"| RSS {a.settle:g} s after publishing | {mib(r['after_settle'])} |",
        f"| VmHWM (kernel's peak RSS) of the first process | {mib(r['vmhwm'])} |",
        f"| data dir on disk | {mib(res['data_dir_bytes'], 'B')} |",
        f"| SIGTERM to exit | {res['shutdown_secs']:.2f} s |",
        f"| **restart to `listening mqtt=`** (recovery of {a.messages:,} queued) | **{res['ready_secs']:.2f} s** |",
        f"| peak RSS while recovering (before ready) | {mib(r['peak_recovering'])} |",
        f"| RSS after recovery (idle, 2 s after ready) | {mib(r['after_recovery'])} |",
        f"| peak RSS while draining | {mib(r['peak_drain'])} |",
        f"| RSS 2 s after the drain | {mib(r['after_drain'])} |",
        f"| VmHWM of the restarted process | {mib(r['vmhwm_restart'])} |",
        f"| drain rate | {d.get('msgs_per_sec', 0):,.0f} msg/s |",
        f"| delivered after restart (distinct) / lost / duplicates | {d.get('received', 0):,} / {d.get('lost', '–')} / {d.get('duplicates', '–')} |",
        f"| verdict | {'all ' + format(a.messages, ',') + ' delivered' if res['valid'] else 'INVALID: not all messages arrived'} |",
    ]
    table = "\n".join(lines)
    res["table"] = table
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)
    print()
    print(f"command: {command}")
    print(f"machine: {info['nproc']} × {info['cpu']}, {info['memory']}; {info['mote']}; {info['rustc']}; "
          f"git {info['git']}; {info['date']}")
    if res.get("recovery_log"):
        print(f"recovery log line: {res['recovery_log']}")
    print()
    print(table)
    print(f"\nraw results: {out_path}")
    return 0 if res["valid"] else 2


if __name__ == "__main__":
    sys.exit(main())
