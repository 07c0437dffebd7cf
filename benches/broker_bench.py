#!/usr/bin/env python3
"""Broker throughput side by side: Mote and Mosquitto, one invocation, alternating.

Every measurement starts a fresh broker process, runs `mqtt-load` (benches/load: raw
MQTT over mote-codec, the same bytes for both brokers) against it, and stops it again.
Each configuration is repeated R times; the brokers take turns within a repetition and
the order flips from one repetition to the next. Reported: medians over the valid runs
and the ratio to the peer. A run in which a QoS 1/2 message was lost is invalid: it is
left out of the median and flagged in the table.

Suites
  issue4  mote --memory vs Mosquitto (persistence false), 64-byte payloads:
          QoS 0 and QoS 1 fan-in (8 publishers, one topic each -> 1 subscriber on
          `load/#`) and fan-out (1 publisher -> 8 subscribers of one topic).
          (a) saturation: publishers send as fast as the broker takes them (QoS 1:
              64 in flight per publisher); delivered msgs/s at the subscribers and
              the p99 latency under that load (mostly queueing);
          (b) fixed offered load both brokers sustain (fan-in 8 x 2,500/s, fan-out
              1 x 5,000/s = 40,000 deliveries/s): p50/p99 end-to-end latency.
  issue5  QoS 1, 8 publishers x COUNT, 64 in flight each, one persistent (clean
          session 0) subscriber that is OFFLINE while they publish and is drained
          afterwards (every acknowledged message must arrive): publish msgs/s =
          acknowledged (and, for --fsync always, durable) per second. mote --fsync
          always / every=10 / never on a fresh data dir on disk, mote --memory, and
          Mosquitto with persistence true (which writes its file only periodically).

Both brokers: per-client queues of 2,000,000 messages (mote max_queued_messages /
Mosquitto max_queued_messages), outbound window 256 (mote's default max_inflight;
Mosquitto max_inflight_messages 256), TCP_NODELAY on (mote always; Mosquitto
set_tcp_nodelay true, which is faster than its default here).

The load generator and the broker run on the same machine and share its cores.

Comparing builds: `--baseline-bin PATH` adds a second mote binary (an older commit's
release build; column "mote-base") beside --mote in every mote configuration, and
`--worker-threads N` adds --mote with `[mqtt] worker_threads = N` (column
"mote[wt=N]"; the config key must exist in --mote). They take turns with the others in
the same rounds, and extra tables give each one's medians and ratio to mote-base with a
verdict: within 5 %, better, or worse. Before measuring, the script waits (up to
--wait-load-max seconds) for the 1-minute load average to drop below --wait-load.

Usage (from the repository root):
    cargo build --release -p mote-broker -p mote-load
    python3 benches/broker_bench.py [--reps 5] [--suite issue4 issue5] [--out FILE]
        [--baseline-bin OLD/target/release/mote] [--worker-threads 2]
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MOTE_CONFIG = "[mqtt]\nmax_queued_messages = 2000000\nmax_queued_bytes = 4294967296\n"
# With --memory the queue budget (storage.queue_memory_bytes, 256 MiB by default) is a
# hard cap since 61341b6: past it deliveries are dropped. The issue 5 scenario queues
# 800,000 messages for one offline subscriber, more than that, so --memory runs get a
# budget as large as the per-client limit (as the older builds behaved: no cap).
MOTE_MEMORY_CONFIG = "[storage]\nqueue_memory_bytes = 4294967296\n"


# ---------------------------------------------------------------------------------------
# Processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"broker on port {port} did not start within {timeout}s")


def stop(proc, timeout=20.0):
    """SIGTERM, wait, SIGKILL if needed; returns (seconds to exit, killed?)."""
    if proc is None or proc.poll() is not None:
        return 0.0, False
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
        return time.monotonic() - t, False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return time.monotonic() - t, True


CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_cpu_secs():
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    idle = vals[3] + vals[4]
    return (sum(vals) - idle) / CLK_TCK, sum(vals) / CLK_TCK


def proc_cpu_secs(pid):
    """user + system CPU seconds of process `pid` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def children_cpu_secs():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class MoteProc:
    """A running `mote`; its stderr is read by a thread that notes the ready line."""

    def __init__(self, exe, args):
        self.lines = []
        self.ready = threading.Event()
        self.addr = None
        self.started = time.monotonic()
        self.ready_at = None
        self.proc = subprocess.Popen([exe] + args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, errors="replace")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            if len(self.lines) < 10000:
                self.lines.append(line)
            m = re.search(r"listening mqtt=(\S+)", line)
            if m and not self.ready.is_set():
                self.ready_at = time.monotonic()
                self.addr = m.group(1)
                self.ready.set()

    def wait_ready(self, timeout=600.0):
        end = time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if self.proc.poll() is not None:
                raise RuntimeError("mote exited before listening:\n" + "\n".join(self.lines[-20:]))
            if time.monotonic() > end:
                raise RuntimeError(f"mote not ready within {timeout}s")
        return self.addr

    def stop(self, timeout=20.0):
        r = stop(self.proc, timeout)
        self.reader.join(timeout=5)
        return r


class Mote:
    """mote with a store mode: "memory" or an fsync policy for the on-disk store.

    `label` names the binary in the tables ("mote", "mote-base" for --baseline-bin,
    "mote[wt=2]" for --worker-threads); `mqtt_extra` is added to the [mqtt] section of
    its config (keys the binary must know)."""

    def __init__(self, exe, mode, work, label="mote", mqtt_extra=""):
        self.exe, self.mode, self.work = exe, mode, work
        self.mqtt_extra = mqtt_extra
        self.name = f"{label} --memory" if mode == "memory" else f"{label} --fsync {mode}"
        self.p = None

    def start(self, run_dir):
        cfg = os.path.join(run_dir, "mote.toml")
        with open(cfg, "w") as f:
            f.write(MOTE_CONFIG + self.mqtt_extra + (MOTE_MEMORY_CONFIG if self.mode == "memory" else ""))
        args = ["--mqtt", "127.0.0.1:0", "--config", cfg, "--log", "info"]
        if self.mode == "memory":
            args.append("--memory")
        else:
            args += ["--data-dir", os.path.join(run_dir, "data"), "--fsync", self.mode]
        self.p = MoteProc(self.exe, args)
        return self.p.wait_ready(30)

    def pid(self):
        return self.p.proc.pid

    def stop(self):
        r = self.p.stop() if self.p else (0.0, False)
        self.p = None
        return r


class Mosquitto:
    def __init__(self, exe, persistence):
        self.exe, self.persistence = exe, persistence
        self.name = "mosquitto" + (" (persistence true)" if persistence else "")
        self.proc = None

    @staticmethod
    def conf(port, persistence, run_dir):
        text = (f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 2000000\n"
                "max_inflight_messages 256\nset_tcp_nodelay true\nlog_dest stderr\nlog_type error\n"
                "log_type warning\n")
        if os.geteuid() == 0:
            text += "user root\n"
        if persistence:
            text += f"persistence true\npersistence_location {os.path.join(run_dir, 'data')}/\n"
            os.makedirs(os.path.join(run_dir, "data"), exist_ok=True)
        else:
            text += "persistence false\n"
        return text

    def start(self, run_dir):
        port = free_port()
        cfg = os.path.join(run_dir, "mosquitto.conf")
        with open(cfg, "w") as f:
            f.write(self.conf(port, self.persistence, run_dir))
        self.log = open(os.path.join(run_dir, "mosquitto.log"), "w")
        self.proc = subprocess.Popen([self.exe, "-c", cfg], stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_port(port, self.proc)
        return f"127.0.0.1:{port}"

    def pid(self):
        return self.proc.pid

    def stop(self):
        r = stop(self.proc)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
        return r


def run_load(load, addr, args, timeout):
    """Runs mqtt-load with --json; returns (exit status, report dict or None, stderr)."""
    cmd = [load, "--broker", addr, "--json", "--timeout", str(timeout)] + args
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30)
    except subprocess.TimeoutExpired as e:
        return -1, None, f"mqtt-load killed after {timeout + 30}s: {e}"
    report = None
    for line in reversed(p.stdout.strip().splitlines()):
        try:
            report = json.loads(line)
            break
        except ValueError:
            continue
    return p.returncode, report, p.stderr.strip()


# ---------------------------------------------------------------------------------------
# Environment


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(mote, load, mosquitto):
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_total = ""
    try:
        with open("/proc/meminfo") as f:
            mem_total = f.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    mosq_version = ""
    if mosquitto:
        out = subprocess.run([mosquitto, "-h"], capture_output=True, text=True).stdout
        mosq_version = out.splitlines()[0] if out else ""
    commit = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = sh(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "--", "broker", "codec"])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem_total,
        "kernel": platform.release(),
        "mote": sh([mote, "--version"]),
        "mqtt_load": sh([load, "--version"]),
        "mosquitto": mosq_version,
        "rustc": sh(["rustc", "--version"]),
        "git": commit + (" + uncommitted changes in broker/ or codec/" if dirty else " (broker/ and codec/ as committed)"),
    }


def fs_type(path):
    """The file system type of the mount holding `path` (from /proc/mounts)."""
    path = os.path.realpath(path)
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def command_line():
    return "python3 benches/broker_bench.py " + " ".join(sys.argv[1:])


# ---------------------------------------------------------------------------------------
# Suites


def issue4_configs(a):
    fanin = ["--publishers", "8", "--subscribers", "1", "--topic-per-publisher", "--size", "64"]
    fanout = ["--publishers", "1", "--subscribers", "8", "--size", "64"]
    sat, lat = [], []
    for qos in (0, 1):
        q = ["--qos", str(qos), "--inflight", "64"]
        sat.append((f"QoS {qos} fan-in 8→1", fanin + q + ["--count", str(a.fanin_count)]))
        sat.append((f"QoS {qos} fan-out 1→8", fanout + q + ["--count", str(a.fanout_count)]))
        lat.append((f"QoS {qos} fan-in 8→1 @ 8×{a.fanin_rate:g}/s",
                    fanin + q + ["--rate", str(a.fanin_rate), "--duration", str(a.latency_secs)]))
        lat.append((f"QoS {qos} fan-out 1→8 @ {a.fanout_rate:g}/s",
                    fanout + q + ["--rate", str(a.fanout_rate), "--duration", str(a.latency_secs)]))
    return sat, lat


def issue5_args(a):
    return ["--publishers", "8", "--subscribers", "1", "--qos", "1", "--size", "64", "--inflight", "64",
            "--count", str(a.durable_count), "--persistent", "--offline-subs", "--drain", "--settle", "20"]


def measure(broker, load, args, work, label, rep, timeout):
    run_dir = os.path.join(work, f"run-{os.getpid()}-{time.monotonic_ns()}")
    os.makedirs(run_dir)
    rec = {"config": label, "broker": broker.name, "rep": rep, "args": args}
    try:
        addr = broker.start(run_dir)
        busy0, total0 = machine_cpu_secs()
        broker0, load0 = proc_cpu_secs(broker.pid()), children_cpu_secs()
        rc, report, err = run_load(load, addr, args, timeout)
        busy1, total1 = machine_cpu_secs()
        broker1, load1 = proc_cpu_secs(broker.pid()), children_cpu_secs()
        rec.update(rc=rc, report=report, stderr=err[-2000:])
        # CPU used by neither the broker nor mqtt-load while it ran, as a fraction of
        # the whole machine: other people's work disturbing the measurement.
        foreign = (busy1 - busy0) - (broker1 - broker0) - (load1 - load0)
        rec["cpu"] = {"broker_secs": round(broker1 - broker0, 3), "load_secs": round(load1 - load0, 3),
                      "machine_busy_secs": round(busy1 - busy0, 3),
                      "foreign_fraction": round(max(foreign, 0.0) / max(total1 - total0, 1e-9), 4)}
    except Exception as e:  # a broker that fails to start is a result, not a crash
        rec.update(rc=-1, report=None, stderr=str(e))
    finally:
        secs, killed = broker.stop()
        rec["shutdown_secs"] = round(secs, 3)
        rec["shutdown_killed"] = killed
        shutil.rmtree(run_dir, ignore_errors=True)
    rec["valid"] = bool(rec["report"] and rec["report"].get("valid") and rec["rc"] == 0)
    return rec


def describe(rec):
    r = rec.get("report") or {}
    pub, dl, lat = r.get("publish") or {}, r.get("delivery") or {}, r.get("latency_us") or {}
    s = (f"pub {pub.get('msgs_per_sec', 0):>10.0f}/s  deliv {dl.get('msgs_per_sec', 0):>10.0f}/s"
         f"  lost {dl.get('lost', '-')}")
    if lat:
        s += f"  p50 {lat['p50']:.0f}us p99 {lat['p99']:.0f}us"
    if not rec["valid"]:
        s += "  INVALID: " + "; ".join(r.get("problems") or [rec.get("stderr", "")[-300:]])
    elif r.get("problems"):
        s += "  (" + "; ".join(r["problems"]) + ")"
    return s


def run_suite(name, configs, brokers, load, a, work, results):
    """configs: [(label, args)]; brokers: [Broker]. Alternates brokers; flips the order
    every repetition."""
    for rep in range(a.reps):
        order = brokers if rep % 2 == 0 else list(reversed(brokers))
        for label, args in configs:
            for b in order:
                for attempt in range(a.retries + 1):
                    rec = measure(b, load, args, work, label, rep, a.run_timeout)
                    foreign = (rec.get("cpu") or {}).get("foreign_fraction", 0.0)
                    if foreign <= a.max_foreign or attempt == a.retries:
                        break
                    print(f"  busy machine: {foreign:.0%} of the CPU went to other processes; "
                          f"repeating in {a.retry_wait:g} s", flush=True)
                    time.sleep(a.retry_wait)
                rec["suite"] = name
                rec["attempts"] = attempt + 1
                rec["busy"] = foreign > a.max_foreign
                results.append(rec)
                print(f"[{name} rep {rep + 1}/{a.reps}] {label:<34} {b.name:<30} {describe(rec)}"
                      f"  other-cpu {foreign:.0%}", flush=True)


def pick(rec, path):
    v = rec.get("report") or {}
    for k in path:
        v = (v or {}).get(k)
    return v


def median_of(results, suite, label, broker, path):
    vals = [pick(r, path) for r in results
            if r["suite"] == suite and r["config"] == label and r["broker"] == broker and r["valid"]]
    vals = [v for v in vals if v is not None]
    n_all = sum(1 for r in results if r["suite"] == suite and r["config"] == label and r["broker"] == broker)
    return (statistics.median(vals) if vals else None), len(vals), n_all


def median_fn(results, suite, label, broker, fn):
    """Median of fn(run) over the valid runs of one configuration and broker."""
    vals = [fn(r) for r in results
            if r["suite"] == suite and r["config"] == label and r["broker"] == broker and r["valid"]]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def cpu_us_per_msg(who, path):
    """CPU microseconds `who` ("broker_secs" or "load_secs") spent per message counted at `path`."""
    def fn(rec):
        n = pick(rec, path)
        secs = (rec.get("cpu") or {}).get(who)
        return secs * 1e6 / n if n and secs is not None else None
    return fn


def fmt_rate(v):
    return "–" if v is None else f"{v:,.0f}"


def fmt_us(v):
    if v is None:
        return "–"
    return f"{v / 1000:,.1f} ms" if v >= 10000 else f"{v:,.0f} µs"


def fmt_ratio(a, b):
    return "–" if not a or not b else f"{a / b:.2f}×"


def valid_note(n, n_all):
    return "" if n == n_all else f" ({n_all - n}/{n_all} invalid)"


def table_issue4(results, sat, lat, mote, mosq):
    out = ["Saturation (publishers as fast as the broker accepts; QoS 1: 64 in flight per publisher). "
           "Delivered = distinct messages received by all subscribers per second; p99 = end-to-end "
           "latency under that load (mostly time spent queued).", "",
           f"| workload | delivered msg/s {mote} | delivered msg/s {mosq} | ratio | published msg/s {mote} "
           f"| published msg/s {mosq} | p99 {mote} | p99 {mosq} |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for label, _ in sat:
        d1, n1, a1 = median_of(results, "issue4", label, mote, ["delivery", "msgs_per_sec"])
        d2, n2, a2 = median_of(results, "issue4", label, mosq, ["delivery", "msgs_per_sec"])
        p1, _, _ = median_of(results, "issue4", label, mote, ["publish", "msgs_per_sec"])
        p2, _, _ = median_of(results, "issue4", label, mosq, ["publish", "msgs_per_sec"])
        l1, _, _ = median_of(results, "issue4", label, mote, ["latency_us", "p99"])
        l2, _, _ = median_of(results, "issue4", label, mosq, ["latency_us", "p99"])
        star = "*" if label.startswith("QoS 0") else ""
        drops = []
        for b in (mote, mosq):
            lost, _, _ = median_of(results, "issue4", label, b, ["delivery", "lost"])
            if lost:
                drops.append(f"{b}: median {lost:,.0f} QoS 0 messages dropped per run")
        out.append(f"| {label} | {fmt_rate(d1)}{valid_note(n1, a1)} | {fmt_rate(d2)}{valid_note(n2, a2)} | "
                   f"{fmt_ratio(d1, d2)} | {fmt_rate(p1)}{star} | {fmt_rate(p2)}{star} | {fmt_us(l1)} | {fmt_us(l2)} |")
        notes.extend(f"{label}, {d}" for d in drops)
    out += ["", "\\* QoS 0 published = written into the socket by the publishers (nothing acknowledges a QoS 0 "
            "publish), so it measures the kernel's buffers more than the broker; the delivered column is the "
            "broker's number."]
    out += [f"Dropped: {n}." for n in notes] or ["No QoS 0 message was dropped in any run."]
    out += ["", "CPU per delivered message in the saturation runs (user + system time of each process "
            "÷ distinct messages delivered; independent of how the two cores were shared):", "",
            f"| workload | {mote} µs/msg | {mosq} µs/msg | ratio (mote ÷ mosquitto) | mqtt-load µs/msg with {mote} "
            f"| mqtt-load µs/msg with {mosq} |",
            "|---|---:|---:|---:|---:|---:|"]
    for label, _ in sat:
        c1 = median_fn(results, "issue4", label, mote, cpu_us_per_msg("broker_secs", ["delivery", "received"]))
        c2 = median_fn(results, "issue4", label, mosq, cpu_us_per_msg("broker_secs", ["delivery", "received"]))
        l1 = median_fn(results, "issue4", label, mote, cpu_us_per_msg("load_secs", ["delivery", "received"]))
        l2 = median_fn(results, "issue4", label, mosq, cpu_us_per_msg("load_secs", ["delivery", "received"]))
        f = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        out.append(f"| {label} | {f(c1)} | {f(c2)} | {fmt_ratio(c1, c2)} | {f(l1)} | {f(l2)} |")
    out += ["", "Fixed offered load (both brokers keep up): end-to-end latency of every delivery.", "",
            f"| workload | p50 {mote} | p99 {mote} | p50 {mosq} | p99 {mosq} | p99 ratio (mote ÷ mosquitto) |",
            "|---|---:|---:|---:|---:|---:|"]
    for label, _ in lat:
        a50, n1, a1 = median_of(results, "issue4-latency", label, mote, ["latency_us", "p50"])
        a99, _, _ = median_of(results, "issue4-latency", label, mote, ["latency_us", "p99"])
        b50, n2, a2 = median_of(results, "issue4-latency", label, mosq, ["latency_us", "p50"])
        b99, _, _ = median_of(results, "issue4-latency", label, mosq, ["latency_us", "p99"])
        out.append(f"| {label} | {fmt_us(a50)}{valid_note(n1, a1)} | {fmt_us(a99)} | {fmt_us(b50)}{valid_note(n2, a2)} "
                   f"| {fmt_us(b99)} | {fmt_ratio(a99, b99)} |")
    out += ["", foreign_note(results, "issue4") + " (saturation)",
            foreign_note(results, "issue4-latency") + " (fixed load)"]
    return "\n".join(out)


def foreign_note(results, suite):
    fr = sorted((r.get("cpu") or {}).get("foreign_fraction", 0.0) for r in results if r["suite"] == suite)
    if not fr:
        return ""
    busy = sum(1 for r in results if r["suite"] == suite and r.get("busy"))
    return (f"CPU taken by other processes on the machine during these runs: median {statistics.median(fr):.0%}, "
            f"max {fr[-1]:.0%}; {busy} of {len(fr)} runs above the threshold after all repeats.")


def table_issue5(results, label, names):
    med = {n: median_of(results, "issue5", label, n, ["publish", "msgs_per_sec"]) for n in names}
    drain = {n: median_of(results, "issue5", label, n, ["delivery", "msgs_per_sec"])[0] for n in names}
    lost = {n: sum((pick(r, ["delivery", "lost"]) or 0) for r in results
                   if r["suite"] == "issue5" and r["broker"] == n) for n in names}
    spread = {}
    for n in names:
        vals = [pick(r, ["publish", "msgs_per_sec"]) for r in results
                if r["suite"] == "issue5" and r["broker"] == n and r["valid"]]
        spread[n] = f"{min(vals):,.0f}–{max(vals):,.0f}" if vals else "–"
    memory = next((n for n in names if n.endswith("--memory")), None)
    mosq = next((n for n in names if n.startswith("mosquitto")), None)
    out = [f"| broker | acked msg/s (median) | min–max | ÷ mote --memory | ÷ {mosq} | drain msg/s | lost (all runs) "
           "| broker CPU µs/msg (publish + drain) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in names:
        m, k, k_all = med[n]
        cpu = median_fn(results, "issue5", label, n, cpu_us_per_msg("broker_secs", ["publish", "acked"]))
        out.append(f"| {n} | {fmt_rate(m)}{valid_note(k, k_all)} | {spread[n]} | "
                   f"{fmt_ratio(m, med[memory][0]) if memory else '–'} | {fmt_ratio(m, med[mosq][0]) if mosq else '–'} | "
                   f"{fmt_rate(drain[n])} | {lost[n]} | {'–' if cpu is None else f'{cpu:.2f}'} |")
    always = "mote --fsync always"
    if always in med and memory and mosq:
        out += ["", f"`--fsync always` ÷ `--memory` = **{fmt_ratio(med[always][0], med[memory][0])}** (goal ≥ 0.5×); "
                f"`--fsync always` ÷ Mosquitto (persistence true) = **{fmt_ratio(med[always][0], med[mosq][0])}** (goal > 1×)."]
    out += ["", foreign_note(results, "issue5")]
    return "\n".join(out)


def values_of(results, suite, label, broker, path):
    vals = [pick(r, path) for r in results
            if r["suite"] == suite and r["config"] == label and r["broker"] == broker and r["valid"]]
    return [v for v in vals if v is not None]


def verdict(ratio, higher_better):
    """Within 5 % of the baseline, better, or worse (ratio = new ÷ baseline)."""
    if ratio is None:
        return "–"
    gain = ratio if higher_better else 1 / ratio
    if gain > 1.05:
        return "better"
    if gain >= 0.95:
        return "within 5 %"
    return "**worse**"


def compare_rows_issue4(sat, lat):
    """(row label, suite, config, broker suffix, metric, path, higher is better)."""
    rows = []
    for label, _ in sat:
        rows.append((label, "issue4", label, "--memory", "delivered msg/s", ["delivery", "msgs_per_sec"], True))
        if label.startswith("QoS 1"):
            rows.append((label, "issue4", label, "--memory", "acked msg/s", ["publish", "msgs_per_sec"], True))
    for label, _ in lat:
        rows.append((label, "issue4-latency", label, "--memory", "p50", ["latency_us", "p50"], False))
        rows.append((label, "issue4-latency", label, "--memory", "p99", ["latency_us", "p99"], False))
    return rows


def compare_rows_issue5(label, modes):
    rows = []
    for m in modes:
        suffix = "--memory" if m == "memory" else f"--fsync {m}"
        rows.append((f"issue5 {suffix}", "issue5", label, suffix, "acked msg/s", ["publish", "msgs_per_sec"], True))
        rows.append((f"issue5 {suffix}", "issue5", label, suffix, "drain msg/s", ["delivery", "msgs_per_sec"], True))
    return rows


def paired_ratios(results, suite, config, a, b, path):
    """Per repetition, the ratio of broker a's value to broker b's in the same round
    (both runs valid): the rounds interleave the brokers, so a slow spell of the machine
    moves both and cancels out of the ratio."""
    by_rep = {}
    for r in results:
        if r["suite"] == suite and r["config"] == config and r["valid"] and r["broker"] in (a, b):
            v = pick(r, path)
            if v is not None:
                by_rep.setdefault(r["rep"], {})[r["broker"]] = v
    return [d[a] / d[b] for d in by_rep.values() if a in d and b in d and d[b]]


def table_vs_base(results, rows, cols, base):
    """Medians of each binary (cols: labels such as "mote", "mote-base", "mote[wt=2]")
    per scenario, each one's ratio to `base` with a verdict (within 5 % or not), and the
    median (min–max) of the same ratio taken round by round."""
    others = [c for c in cols if c != base]
    head = "| scenario | metric | " + " | ".join(cols) + " | " + " | ".join(
        f"{c} ÷ {base} | verdict | per round: median (min–max) | verdict" for c in others) + \
        " | spread (max−min)/median " + ", ".join(cols) + " |"
    out = [head, "|---|---|" + "---:|" * len(cols) + "---:|---|---:|---|" * len(others) + "---|"]
    for row_label, suite, config, suffix, metric, path, higher in rows:
        med, spread = {}, []
        for c in cols:
            vals = values_of(results, suite, config, f"{c} {suffix}", path)
            med[c] = statistics.median(vals) if vals else None
            spread.append(f"{(max(vals) - min(vals)) / med[c]:.0%}" if vals and med[c] else "–")
        fmt = fmt_rate if "msg/s" in metric else fmt_us
        cells = [fmt(med[c]) for c in cols]
        for c in others:
            r = med[c] / med[base] if med[c] and med[base] else None
            cells += ["–" if r is None else f"{r:.3f}", verdict(r, higher)]
            pr = paired_ratios(results, suite, config, f"{c} {suffix}", f"{base} {suffix}", path)
            pm = statistics.median(pr) if pr else None
            cells += ["–" if pm is None else f"{pm:.3f} ({min(pr):.2f}–{max(pr):.2f}, n={len(pr)})",
                      verdict(pm, higher)]
        out.append(f"| {row_label} | {metric} | " + " | ".join(cells) + " | " + " / ".join(spread) + " |")
    out += ["", "Ratios are of medians, or the median of the round-by-round ratios. Throughput: above 1 is better; latency: below 1 is better. "
            "\"within 5 %\" = ratio in 0.95–1.05 (latency: 1/ratio)."]
    return "\n".join(out)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def wait_for_quiet(limit, max_wait, poll=10.0):
    """Waits until the 1-minute load average is below `limit` (at most `max_wait`
    seconds); returns (load average when it stopped waiting, seconds waited)."""
    t0 = time.monotonic()
    la = loadavg()
    while la >= limit and time.monotonic() - t0 < max_wait:
        print(f"  load average {la:.2f} >= {limit}; waiting", flush=True)
        time.sleep(poll)
        la = loadavg()
    return la, round(time.monotonic() - t0)


def interrupt_on_signals():
    """SIGTERM and SIGINT (even when started with SIGINT ignored, as background jobs are)
    raise KeyboardInterrupt, so every broker started is stopped on the way out."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


ISSUE5_MODES = ("always", "every=10", "never", "memory")


def compare_cols(a):
    """Column labels of the mote binaries compared: mote, then mote-base and mote[wt=N]
    when asked for (an older results file has neither setting)."""
    cols = ["mote"]
    if getattr(a, "baseline_bin", None):
        cols.append("mote-base")
    if getattr(a, "worker_threads", None):
        cols.append(f"mote[wt={a.worker_threads}]")
    return cols


def mote_variants(a, mode):
    """The mote brokers of one store mode: --mote, then --baseline-bin and --mote with
    `worker_threads` when asked for. Rounds alternate among them (run_suite)."""
    out = [Mote(a.mote, mode, a.work_dir)]
    if a.baseline_bin:
        out.append(Mote(a.baseline_bin, mode, a.work_dir, label="mote-base"))
    if a.worker_threads:
        out.append(Mote(a.mote, mode, a.work_dir, label=f"mote[wt={a.worker_threads}]",
                        mqtt_extra=f"worker_threads = {a.worker_threads}\n"))
    return out


def main():
    interrupt_on_signals()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mote", default=os.path.join(ROOT, "target", "release", "mote"))
    ap.add_argument("--load", default=os.path.join(ROOT, "target", "release", "mqtt-load"))
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--baseline-bin", metavar="PATH",
                    help="a second mote binary (e.g. an older build) run beside --mote in every "
                         "scenario, in the same rounds; its column is \"mote-base\"")
    ap.add_argument("--worker-threads", type=int, metavar="N",
                    help="also run --mote with `[mqtt] worker_threads = N` (column \"mote[wt=N]\")")
    ap.add_argument("--wait-load", type=float, default=0.7,
                    help="before measuring, wait until the 1-minute load average is below this")
    ap.add_argument("--wait-load-max", type=float, default=600, help="give up waiting after this many seconds")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of every configuration")
    ap.add_argument("--suite", nargs="+", choices=["issue4", "issue5"], default=["issue4", "issue5"])
    ap.add_argument("--fanin-count", type=int, default=100000, help="messages per publisher, fan-in saturation")
    ap.add_argument("--fanout-count", type=int, default=200000, help="messages of the publisher, fan-out saturation")
    ap.add_argument("--fanin-rate", type=float, default=2500, help="msgs/s per publisher, fan-in latency runs")
    ap.add_argument("--fanout-rate", type=float, default=5000, help="msgs/s of the publisher, fan-out latency runs")
    ap.add_argument("--latency-secs", type=float, default=3, help="duration of each fixed-rate run")
    ap.add_argument("--durable-count", type=int, default=100000, help="messages per publisher, issue 5")
    ap.add_argument("--max-foreign", type=float, default=0.10,
                    help="repeat a run when other processes used more than this fraction of the machine's CPU")
    ap.add_argument("--retries", type=int, default=4, help="repeats of a run on a busy machine")
    ap.add_argument("--retry-wait", type=float, default=15, help="seconds to wait before repeating")
    ap.add_argument("--run-timeout", type=int, default=300, help="seconds allowed for one mqtt-load run")
    ap.add_argument("--work-dir", default="/var/tmp/mote-broker-bench",
                    help="where data dirs are created (must be a disk, not tmpfs)")
    ap.add_argument("--out", default=None, help="raw JSON results [default: WORK_DIR/broker_bench-DATE.json]")
    ap.add_argument("--from-json", metavar="FILE",
                    help="measure nothing: print the tables of an earlier run's raw results")
    a = ap.parse_args()

    if a.from_json:
        with open(a.from_json) as f:
            doc = json.load(f)
        saved = argparse.Namespace(**doc["settings"])
        results = doc["runs"]
        print(f"command: {doc['command']}")
        print("machine: " + "; ".join(f"{k} {v}" for k, v in doc["machine"].items()))
        cols = compare_cols(saved)
        if any(r["suite"] == "issue4" for r in results):
            sat, lat = issue4_configs(saved)
            print("\n## issue4\n\n" + table_issue4(results, sat, lat, "mote --memory", "mosquitto"))
            if len(cols) > 1:
                print("\n## issue4 vs base\n\n" + table_vs_base(results, compare_rows_issue4(sat, lat), cols, "mote-base"))
        names = list(dict.fromkeys(r["broker"] for r in results if r["suite"] == "issue5"))
        if names:
            label = next(r["config"] for r in results if r["suite"] == "issue5")
            print("\n## issue5\n\n" + table_issue5(results, label, names))
            if len(cols) > 1:
                print("\n## issue5 vs base\n\n" + table_vs_base(
                    results, compare_rows_issue5(label, ISSUE5_MODES), cols, "mote-base"))
        return 0

    for exe in (a.mote, a.load, a.mosquitto) + ((a.baseline_bin,) if a.baseline_bin else ()):
        if not os.access(exe, os.X_OK):
            sys.exit(f"not executable: {exe} (build with `cargo build --release -p mote-broker -p mote-load`)")
    os.makedirs(a.work_dir, exist_ok=True)
    fstype = fs_type(a.work_dir)
    if "issue5" in a.suite and fstype in ("tmpfs", "ramfs"):
        sys.exit(f"--work-dir {a.work_dir} is on {fstype}; issue 5 must write to a disk")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = a.out or os.path.join(a.work_dir, f"broker_bench-{stamp}.json")

    info = machine_info(a.mote, a.load, a.mosquitto)
    info["work_dir"] = f"{a.work_dir} ({fstype})"
    if a.baseline_bin:
        info["mote_base"] = sh([a.baseline_bin, "--version"]) + f" ({a.baseline_bin})"
    la, waited = wait_for_quiet(a.wait_load, a.wait_load_max)
    info["loadavg_at_start"] = f"{la:.2f} after waiting {waited} s (limit {a.wait_load})"
    print(f"command: {command_line()}")
    for k, v in info.items():
        print(f"  {k}: {v}")
    print(flush=True)

    results = []
    tables = {}
    t0 = time.monotonic()
    interrupted = False
    try:
        cols = compare_cols(a)
        if "issue4" in a.suite:
            motes = mote_variants(a, "memory")
            mosq = Mosquitto(a.mosquitto, persistence=False)
            brokers = motes + [mosq]
            sat, lat = issue4_configs(a)
            run_suite("issue4", sat, brokers, a.load, a, a.work_dir, results)
            run_suite("issue4-latency", lat, brokers, a.load, a, a.work_dir, results)
            tables["issue4"] = table_issue4(results, sat, lat, motes[0].name, mosq.name)
            if len(cols) > 1:
                tables["issue4 vs base"] = table_vs_base(results, compare_rows_issue4(sat, lat), cols, "mote-base")
        if "issue5" in a.suite:
            brokers = [m for mode in ISSUE5_MODES for m in mote_variants(a, mode)]
            brokers.append(Mosquitto(a.mosquitto, persistence=True))
            label = f"QoS 1, 8 pub × {a.durable_count}, offline persistent sub + drain"
            run_suite("issue5", [(label, issue5_args(a))], brokers, a.load, a, a.work_dir, results)
            tables["issue5"] = table_issue5(results, label, [b.name for b in brokers])
            if len(cols) > 1:
                tables["issue5 vs base"] = table_vs_base(results, compare_rows_issue5(label, ISSUE5_MODES), cols,
                                                         "mote-base")
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted; writing what was measured", file=sys.stderr)

    doc = {"command": command_line(), "machine": info, "elapsed_secs": round(time.monotonic() - t0, 1),
           "settings": vars(a), "interrupted": interrupted, "tables": tables, "runs": results}
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=1)
    print()
    print(f"command: {command_line()}")
    print(f"machine: {info['nproc']} × {info['cpu']}, {info['memory']}; {info['mote']}; {info['mosquitto']}; "
          f"{info['rustc']}; git {info['git']}; {info['date']}")
    print("The load generator (mqtt-load) and the broker share the machine's cores.")
    for name, t in tables.items():
        print(f"\n## {name}\n\n{t}")
    fr = sorted((r.get("cpu") or {}).get("foreign_fraction", 0.0) for r in results)
    if fr:
        busy = sum(1 for r in results if r.get("busy"))
        print(f"\nCPU used by other processes during the runs: median {statistics.median(fr):.1%}, "
              f"max {fr[-1]:.1%} of the machine; {busy} runs still above {a.max_foreign:.0%} after "
              f"{a.retries} repeats; {sum(r.get('attempts', 1) - 1 for r in results)} repeats in all.")
    invalid = [r for r in results if not r["valid"]]
    print(f"\nraw results: {out_path}  ({len(results)} runs, {len(invalid)} invalid, "
          f"{time.monotonic() - t0:.0f} s)")
    return 1 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
