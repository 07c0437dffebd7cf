#!/usr/bin/env python3
"""Issue #10, fault 8: does compaction (or the periodic tick) stall publishing?

For each mote binary given (--mote, and --baseline-bin for an older build), in one
invocation:

 1. start the broker on a fresh on-disk store (default fsync, `always`) in WORK_DIR;
 2. create SESSIONS persistent sessions (MQTT 3.1.1 clean session 0), each subscribed to
    its own filter `sess/<i>/#`, and leave them offline (before the retained messages:
    the old build scans every retained message on each SUBSCRIBE, which would make
    100,000 subscriptions over 1,000,000 retained messages take hours);
 3. load RETAINED retained messages (QoS 1, small payloads, 8 pipelined publishers,
    topics `ret/<p>/<n>`) with `mqtt-load --retain --topics`;
 4. wait for the machine to be quiet and for any compaction to finish, then run for
    STEADY seconds:
      - the measured stream: one publisher, QoS 1, RATE msg/s, 64-byte payloads, up to
        512 unacknowledged,
        retained, overwriting `ret/0/<n>` in turn (so it goes through the store and
        makes garbage); every PUBACK's latency is logged (`mqtt-load --ack-log`);
      - a filler: one publisher of FILLER_SIZE-byte retained QoS 1 messages on 64 topics
        at a fixed rate, only to grow the journal so that compactions happen (the broker
        compacts when the log grew by max(64 MiB, 2 x the last snapshot) and at least
        half of it is garbage);
      - a watcher of the data dir: a compaction is in progress while `snapshot.tmp`
        exists (both builds write the snapshot there and rename it into place); polled
        every 2 ms, and the broker's "compacted the store" log lines are timestamped;
      - a `$SYS/broker/#` subscriber (the new build publishes `core/hold_max_us` and
        `core/hold_p999_us` every `sys_interval_secs`; the old one has no such topic);
 5. report PUBACK latency p50/p99/p99.9/max over the whole steady phase and over the
    publishes in flight during a compaction (scheduled before it ended, acknowledged
    after it began), counted from when each publish was due (so a stall's backlog counts:
    no coordinated omission) and from its actual write; losses (publishes never
    acknowledged or refused); the broker's hold times before and after the steady phase.

Usage (from the repository root):
    cargo build --release -p mote-broker -p mote-load
    python3 benches/hold_bench.py --baseline-bin OLD/target/release/mote [--retained 1000000]
        [--sessions 100000] [--rate 5000] [--steady-secs 150] [--out FILE]
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from broker_bench import (ROOT, children_cpu_secs, fs_type, interrupt_on_signals, loadavg,  # noqa: E402
                          machine_cpu_secs, machine_info, proc_cpu_secs, stop, wait_for_quiet)

SNAPSHOT_TMP = "snapshot.tmp"


# ---------------------------------------------------------------------------------------
# The broker and what it says


class Broker:
    """A running mote; a thread keeps its stderr lines with wall-clock times."""

    def __init__(self, exe, run_dir, config):
        self.data = os.path.join(run_dir, "data")
        cfg = os.path.join(run_dir, "mote.toml")
        with open(cfg, "w") as f:
            f.write(config)
        self.lines = []  # (unix ns, line): compaction, recovery, warnings, errors
        self.other = 0  # other lines (connections), not kept
        self.started = time.monotonic()
        self.ready_secs = None
        self.ready = threading.Event()
        self.addr = None
        self.proc = subprocess.Popen([exe, "--mqtt", "127.0.0.1:0", "--config", cfg, "--data-dir", self.data,
                                      "--log", "info"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, errors="replace")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            if re.search(r"compact|recover|listening|WARN|ERROR|shutting|flushed", line):
                self.lines.append((time.time_ns(), line))
            else:
                self.other += 1
            m = re.search(r"listening mqtt=(\S+)", line)
            if m and not self.ready.is_set():
                self.addr = m.group(1)
                self.ready_secs = round(time.monotonic() - self.started, 2)
                self.ready.set()

    def wait_ready(self, timeout=60.0):
        end = time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if self.proc.poll() is not None:
                raise RuntimeError("mote exited before listening:\n" + "\n".join(l for _, l in self.lines[-20:]))
            if time.monotonic() > end:
                raise RuntimeError(f"mote not ready within {timeout}s")
        return self.addr

    def compactions(self):
        """(unix ns, bytes) of every "compacted the store" line so far."""
        out = []
        for t, line in list(self.lines):
            if "compacted the store" in line:
                m = re.search(r"bytes=(\d+)", line)
                out.append((t, int(m.group(1)) if m else None))
        return out

    def stop(self):
        r = stop(self.proc, timeout=120)
        self.reader.join(timeout=5)
        return r


class SysWatcher:
    """A minimal MQTT 3.1.1 client subscribed to `$SYS/broker/#` (QoS 0): keeps every
    value received with its wall-clock time."""

    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        cid = b"hold-bench-sys"
        # CONNECT: protocol "MQTT" level 4, clean session, keep alive 0.
        var = b"\x00\x04MQTT\x04\x02\x00\x00" + struct.pack(">H", len(cid)) + cid
        self.sock.sendall(b"\x10" + self._len(len(var)) + var)
        topic = b"$SYS/broker/#"
        body = b"\x00\x01" + struct.pack(">H", len(topic)) + topic + b"\x00"
        self.sock.sendall(b"\x82" + self._len(len(body)) + body)
        self.values = []  # (unix ns, topic, value)
        self.stopping = False
        self.buf = b""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def _len(n):
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def _run(self):
        self.sock.settimeout(0.5)
        while not self.stopping:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            self.buf += data
            self._parse()

    def _parse(self):
        while True:
            if len(self.buf) < 2:
                return
            i, n, shift = 1, 0, 0
            while True:
                if i >= len(self.buf):
                    return
                b = self.buf[i]
                n |= (b & 0x7F) << shift
                shift += 7
                i += 1
                if not b & 0x80:
                    break
            if len(self.buf) < i + n:
                return
            kind, body = self.buf[0], self.buf[i:i + n]
            self.buf = self.buf[i + n:]
            if kind >> 4 == 3 and len(body) >= 2:  # PUBLISH (QoS 0: no packet id)
                tl = struct.unpack(">H", body[:2])[0]
                topic = body[2:2 + tl].decode(errors="replace")
                value = body[2 + tl:].decode(errors="replace")
                self.values.append((time.time_ns(), topic, value))

    def latest(self, name, after_ns=0):
        for t, topic, value in reversed(self.values):
            if topic == f"$SYS/broker/{name}" and t >= after_ns:
                return value
        return None

    def series(self, name):
        return [(t, v) for t, topic, v in self.values if topic == f"$SYS/broker/{name}"]

    def wait_fresh(self, name, after_ns, timeout):
        """The first value of `name` received after `after_ns`, waiting up to `timeout` s."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            v = self.latest(name, after_ns)
            if v is not None:
                return v
            time.sleep(0.1)
        return None

    def close(self):
        self.stopping = True
        try:
            self.sock.sendall(b"\xe0\x00")
            self.sock.close()
        except OSError:
            pass
        self.thread.join(timeout=2)


class DirWatcher:
    """Polls the data dir for `snapshot.tmp`: [start, end) wall-clock ns of each time it
    existed (a compaction writing its snapshot)."""

    def __init__(self, data_dir, every=0.002):
        self.path = os.path.join(data_dir, SNAPSHOT_TMP)
        self.every = every
        self.windows = []
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        since = None
        while not self.stopping:
            exists = os.path.exists(self.path)
            now = time.time_ns()
            if exists and since is None:
                since = now
            elif not exists and since is not None:
                self.windows.append([since, now])
                since = None
            time.sleep(self.every)
        if since is not None:
            self.windows.append([since, None])

    def busy(self):
        return os.path.exists(self.path)

    def close(self):
        self.stopping = True
        self.thread.join(timeout=2)
        return self.windows


def run_load(load, addr, args, timeout):
    """Runs mqtt-load --json; returns (exit status, report or None, stderr, seconds)."""
    cmd = [load, "--broker", addr, "--json", "--timeout", str(timeout)] + args
    t = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30)
    except subprocess.TimeoutExpired as e:
        return -1, None, f"mqtt-load killed after {timeout + 30}s: {e}", time.monotonic() - t
    report = None
    for line in reversed(p.stdout.strip().splitlines()):
        try:
            report = json.loads(line)
            break
        except ValueError:
            continue
    return p.returncode, report, p.stderr.strip()[-2000:], round(time.monotonic() - t, 2)


def start_load(load, addr, args, timeout, out_path):
    """Starts mqtt-load --json in the background, its stdout into `out_path`."""
    cmd = [load, "--broker", addr, "--json", "--timeout", str(timeout)] + args
    f = open(out_path, "w")
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, text=True), f


def finish_load(proc, f, out_path, timeout):
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    f.close()
    report = None
    with open(out_path) as g:
        text = g.read()
    for line in reversed(text.strip().splitlines()):
        try:
            report = json.loads(line)
            break
        except ValueError:
            continue
    return proc.returncode, report, text[-2000:]


# ---------------------------------------------------------------------------------------
# Latency figures


def quantiles(vals):
    """p50/p99/p99.9/max of a list of nanosecond values, in microseconds (nearest rank)."""
    if not vals:
        return None
    v = sorted(vals)
    n = len(v)

    def q(p):
        return round(v[min(n - 1, max(0, int(-(-p * n // 1)) - 1))] / 1000, 1)

    return {"samples": n, "p50": q(0.50), "p99": q(0.99), "p999": q(0.999), "max": round(v[-1] / 1000, 1)}


def read_ack_log(path):
    with open(path, "rb") as f:
        data = f.read()
    return [struct.unpack_from("<QQQ", data, i) for i in range(0, len(data) - len(data) % 24, 24)]


def per_second(records):
    """[second of the schedule, publishes, max latency µs from schedule] per second."""
    if not records:
        return []
    t0 = min(r[0] for r in records)
    buckets = {}
    for a, _, c in records:
        k = (a - t0) // 1_000_000_000
        n, m = buckets.get(k, (0, 0))
        buckets[k] = (n + 1, max(m, c - a))
    return [[k, n, round(m / 1000)] for k, (n, m) in sorted(buckets.items())]


def worst(records, wins, n=20):
    """The n slowest publishes: (s since the first was due, µs from schedule, µs from
    write, index of the compaction window it overlaps or -1)."""
    if not records:
        return []
    t0 = min(r[0] for r in records)
    top = sorted(records, key=lambda r: r[2] - r[0], reverse=True)[:n]
    out = []
    for a, b, c in top:
        w = next((i for i, (s, e) in enumerate(wins) if a < e and c >= s), -1)
        out.append([round((a - t0) / 1e9, 3), round((c - a) / 1000), round((c - b) / 1000), w])
    return out


def latency_figures(records, epoch_unix_ns, windows):
    """Overall and in-compaction PUBACK latency, from schedule and from the write.
    `windows` are wall-clock [start, end) ns; a publish counts as during a compaction
    when it was due before the window ended and acknowledged after it began."""
    wins = [(s - epoch_unix_ns, (e if e is not None else 2 ** 63) - epoch_unix_ns) for s, e in windows]
    during = [r for r in records if any(r[0] < e and r[2] >= s for s, e in wins)]
    outside = [r for r in records if not any(r[0] < e and r[2] >= s for s, e in wins)]
    out = {"per_second": per_second(records), "worst": worst(records, wins)}
    for name, recs in (("overall", records), ("during_compaction", during), ("outside_compaction", outside)):
        out[name] = {"from_schedule": quantiles([c - a for a, _, c in recs]),
                     "from_write": quantiles([c - b for _, b, c in recs])}
    return out


# ---------------------------------------------------------------------------------------
# One binary


def one_binary(label, exe, a, work, mqtt_extra=""):
    run_dir = os.path.join(work, f"hold-{label}-{os.getpid()}-{time.monotonic_ns()}")
    os.makedirs(run_dir)
    rec = {"binary": label, "exe": exe, "version": subprocess.run([exe, "--version"], capture_output=True,
                                                                   text=True).stdout.strip()}
    config = ("[mqtt]\n"
              f"max_retained_messages = {a.retained * 2 + 10000}\n"
              f"sys_interval_secs = {a.sys_interval}\n" + mqtt_extra)
    rec["config"] = config
    t_start = time.monotonic()
    broker = Broker(exe, run_dir, config)
    sysw = dirw = None
    try:
        addr = broker.wait_ready()
        sysw = SysWatcher(addr)
        print(f"[{label}] creating {a.sessions:,} persistent sessions", flush=True)
        rc, rep, err, secs = run_load(a.load, addr, [
            "--publishers", "1", "--count", "0", "--subscribers", str(a.sessions), "--qos", "1",
            "--persistent", "--offline-subs", "--sub-filter", "sess/{i}/#", "--connect-concurrency",
            str(a.connect_concurrency), "--client-prefix", "hold", "--topic-prefix", "none"], a.phase_timeout)
        rec["load_sessions"] = {"rc": rc, "secs": secs, "report": rep, "stderr": err}
        print(f"[{label}]   rc {rc} in {secs} s", flush=True)
        if rc != 0:
            raise RuntimeError(f"creating sessions failed: {err or rep}")

        per = a.retained // 8
        print(f"[{label}] loading {per * 8:,} retained messages", flush=True)
        rc, rep, err, secs = run_load(a.load, addr, [
            "--publishers", "8", "--subscribers", "0", "--qos", "1", "--size", str(a.retained_size),
            "--inflight", "256", "--count", str(per), "--topics", str(per), "--retain", "--topic-prefix", "ret",
            "--client-prefix", "ret"], a.phase_timeout)
        rec["load_retained"] = {"rc": rc, "secs": secs, "report": rep, "stderr": err}
        print(f"[{label}]   rc {rc} in {secs} s: {(rep or {}).get('publish')}", flush=True)
        if rc != 0:
            raise RuntimeError(f"loading retained failed: {err or rep}")

        # The broker's own counts, from a $SYS publication after the set-up.
        after = time.time_ns()
        rec["sys_after_setup"] = {k: sysw.wait_fresh(k, after, a.sys_interval + 5)
                                  for k in ("retained/count", "clients/total", "subscriptions/count")}
        print(f"[{label}]   broker reports {rec['sys_after_setup']}", flush=True)

        if a.restart:
            # A fresh process on the same store: its hold-time counters start here, so
            # what $SYS reports is the steady phase's (the set-up's holds are not in it;
            # recovery runs before the core is shared and is not counted).
            sysw.close()
            sysw = None
            rec["stop_after_setup"] = broker.stop()
            rec["setup_log"] = [l for _, l in broker.lines][-20:]
            broker = Broker(exe, run_dir, config)
            addr = broker.wait_ready(a.phase_timeout)
            rec["restart_ready_secs"] = broker.ready_secs
            print(f"[{label}]   restarted: ready in {broker.ready_secs} s", flush=True)
            sysw = SysWatcher(addr)
            after = time.time_ns()
            rec["sys_after_restart"] = {k: sysw.wait_fresh(k, after, a.sys_interval + 5)
                                        for k in ("retained/count", "clients/total")}
        # Quiet machine, no compaction in progress.
        la, waited = wait_for_quiet(a.wait_load, a.wait_load_max)
        t = time.monotonic()
        while os.path.exists(os.path.join(broker.data, SNAPSHOT_TMP)) and time.monotonic() - t < 300:
            time.sleep(0.5)
        rec["loadavg_before_steady"] = {"load": la, "waited_secs": waited}
        rec["compactions_before_steady"] = broker.compactions()
        rec["sys_before_steady"] = sys_snapshot(sysw, a.sys_interval)
        rec["data_dir_bytes_before_steady"] = dir_bytes(broker.data)

        print(f"[{label}] steady phase: {a.rate:g} msg/s x {a.steady_secs} s, filler {a.filler_rate:g} x "
              f"{a.filler_size} B/s; load average {la:.2f}", flush=True)
        dirw = DirWatcher(broker.data)
        acks = os.path.join(run_dir, "acks.bin")
        busy0, total0 = machine_cpu_secs()
        b0, l0 = proc_cpu_secs(broker.proc.pid), children_cpu_secs()
        t_steady = time.time_ns()
        filler, ff = start_load(a.load, addr, [
            "--publishers", "1", "--subscribers", "0", "--qos", "1", "--size", str(a.filler_size),
            "--inflight", "16", "--rate", str(a.filler_rate), "--duration", str(a.steady_secs), "--topics", "64",
            "--retain", "--topic-prefix", "fill", "--client-prefix", "fill", "--stall", "300"],
            a.steady_secs + 300, os.path.join(run_dir, "filler.json"))
        rc, rep, err, secs = run_load(a.load, addr, [
            "--publishers", "1", "--subscribers", "0", "--qos", "1", "--size", "64", "--inflight", "512",
            "--rate", str(a.rate), "--duration", str(a.steady_secs), "--topics", str(per), "--retain",
            "--topic-prefix", "ret", "--client-prefix", "steady", "--stall", "300", "--ack-log", acks],
            a.steady_secs + 300)
        frc, frep, ferr = finish_load(filler, ff, os.path.join(run_dir, "filler.json"), 300)
        t_end = time.time_ns()
        busy1, total1 = machine_cpu_secs()
        b1, l1 = proc_cpu_secs(broker.proc.pid), children_cpu_secs()
        # A compaction still running is waited for (up to 5 min) so its window closes.
        t = time.monotonic()
        while dirw.busy() and time.monotonic() - t < 300:
            time.sleep(0.1)
        windows = dirw.close()
        dirw = None
        rec["steady"] = {"rc": rc, "secs": secs, "report": rep, "stderr": err}
        rec["filler"] = {"rc": frc, "report": frep, "output": ferr if frc else ""}
        rec["loadavg_after_steady"] = loadavg()
        foreign = (busy1 - busy0) - (b1 - b0) - (l1 - l0)
        rec["cpu"] = {"broker_secs": round(b1 - b0, 2), "load_secs": round(l1 - l0, 2),
                      "foreign_fraction": round(max(foreign, 0.0) / max(total1 - total0, 1e-9), 4)}
        rec["compaction_windows_unix_ns"] = windows
        rec["steady_window_unix_ns"] = [t_steady, t_end]
        rec["compactions_logged"] = broker.compactions()
        in_steady = [w for w in windows if w[0] >= t_steady and (w[1] is None or w[0] < t_end)]
        rec["compactions_in_steady"] = len(in_steady)
        rec["compaction_secs"] = [round(((w[1] or t_end) - w[0]) / 1e9, 3) for w in in_steady]
        if rep and os.path.exists(acks):
            records = read_ack_log(acks)
            rec["ack_records"] = len(records)
            rec["latency_us"] = latency_figures(records, rep["epoch_unix_ns"], in_steady)
        # $SYS after the steady phase (the new build's hold times).
        rec["sys_after_steady"] = sys_snapshot(sysw, a.sys_interval)
        rec["sys_series"] = {k: sysw.series(k) for k in ("core/hold_max_us", "core/hold_p999_us")}
        rec["data_dir_bytes_after"] = dir_bytes(broker.data)
    except Exception as e:  # a failed phase is a result, written out with the rest
        rec["error"] = str(e)
        print(f"[{label}] ERROR: {e}", flush=True)
    finally:
        if dirw:
            dirw.close()
        if sysw:
            sysw.close()
        secs, killed = broker.stop()
        rec["shutdown_secs"], rec["shutdown_killed"] = round(secs, 2), killed
        rec["broker_exit"] = broker.proc.returncode
        rec["log_tail"] = [l for _, l in broker.lines[-30:]]
        rec["warnings"] = [l for _, l in broker.lines if " WARN " in l or " ERROR " in l][:50]
        rec["elapsed_secs"] = round(time.monotonic() - t_start, 1)
        shutil.rmtree(run_dir, ignore_errors=True)
    return rec


def sys_snapshot(sysw, interval):
    """The hold times of the next $SYS publication (none from a build without them)."""
    after = time.time_ns()
    sysw.wait_fresh("uptime", after, interval + 5)
    time.sleep(0.5)  # the rest of the same publication
    return {k: sysw.latest(k, after) for k in ("uptime", "core/hold_max_us", "core/hold_p999_us")}


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


# ---------------------------------------------------------------------------------------
# Report


def fmt(v):
    if v is None:
        return "–"
    if v >= 10000:
        return f"{v / 1000:,.1f} ms"
    return f"{v:,.0f} µs"


def summary(runs):
    out = ["| binary | window | publishes | p50 | p99 | p99.9 | max | p99.9 from write | max from write |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lat = r.get("latency_us") or {}
        for w in ("overall", "during_compaction", "outside_compaction"):
            s = (lat.get(w) or {}).get("from_schedule")
            wr = (lat.get(w) or {}).get("from_write")
            if not s:
                out.append(f"| {r['binary']} | {w} | 0 | – | – | – | – | – | – |")
                continue
            out.append(f"| {r['binary']} | {w.replace('_', ' ')} | {s['samples']:,} | {fmt(s['p50'])} | "
                       f"{fmt(s['p99'])} | {fmt(s['p999'])} | {fmt(s['max'])} | {fmt(wr['p999'])} | "
                       f"{fmt(wr['max'])} |")
    out += ["", "| binary | compactions in steady phase (s each) | sent | acked | refused | unacked | ack records "
            "| filler acked/sent | hold_max_us before / after | hold_p999_us before / after | retained / sessions "
            "(broker's $SYS) | broker CPU s | other CPU | load avg before / after |",
            "|---|---|---:|---:|---:|---:|---:|---|---|---|---|---:|---:|---|"]
    for r in runs:
        pub = ((r.get("steady") or {}).get("report") or {}).get("publish") or {}
        fpub = ((r.get("filler") or {}).get("report") or {}).get("publish") or {}
        sb, sa = r.get("sys_before_steady") or {}, r.get("sys_after_steady") or {}
        setup = r.get("sys_after_setup") or {}
        cpu = r.get("cpu") or {}
        out.append(
            f"| {r['binary']} | {r.get('compactions_in_steady', '–')} ({', '.join(map(str, r.get('compaction_secs', [])))}) "
            f"| {pub.get('sent', '–')} | {pub.get('acked', '–')} | {pub.get('rejected', '–')} | {pub.get('unacked', '–')} "
            f"| {r.get('ack_records', '–')} | {fpub.get('acked', '–')}/{fpub.get('sent', '–')} "
            f"| {sb.get('core/hold_max_us') or '–'} / {sa.get('core/hold_max_us') or '–'} "
            f"| {sb.get('core/hold_p999_us') or '–'} / {sa.get('core/hold_p999_us') or '–'} "
            f"| {setup.get('retained/count')} / {setup.get('clients/total')} | {cpu.get('broker_secs', '–')} "
            f"| {cpu.get('foreign_fraction', 0):.0%} | {(r.get('loadavg_before_steady') or {}).get('load', '–')} / "
            f"{r.get('loadavg_after_steady', '–')} |")
    return "\n".join(out)


def main():
    interrupt_on_signals()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mote", default=os.path.join(ROOT, "target", "release", "mote"))
    ap.add_argument("--baseline-bin", metavar="PATH", help="an older mote build, run after --mote (label mote-base)")
    ap.add_argument("--worker-threads", type=int, metavar="N",
                    help="also run --mote with `[mqtt] worker_threads = N` (label mote[wt=N])")
    ap.add_argument("--load", default=os.path.join(ROOT, "target", "release", "mqtt-load"))
    ap.add_argument("--retained", type=int, default=1_000_000, help="retained messages loaded (multiple of 8)")
    ap.add_argument("--retained-size", type=int, default=32, help="payload bytes of the loaded retained messages")
    ap.add_argument("--sessions", type=int, default=100_000, help="persistent sessions created")
    ap.add_argument("--connect-concurrency", type=int, default=32)
    ap.add_argument("--rate", type=float, default=5000, help="measured publishes per second (QoS 1, 64 B)")
    ap.add_argument("--steady-secs", type=float, default=150)
    ap.add_argument("--filler-rate", type=float, default=200, help="filler publishes per second")
    ap.add_argument("--filler-size", type=int, default=16384, help="filler payload bytes")
    ap.add_argument("--sys-interval", type=int, default=10, help="[mqtt] sys_interval_secs of the broker")
    ap.add_argument("--no-restart", dest="restart", action="store_false",
                    help="keep the set-up's broker process for the steady phase (its hold-time "
                         "counters then include the set-up)")
    ap.add_argument("--phase-timeout", type=int, default=600, help="seconds allowed for each set-up phase")
    ap.add_argument("--wait-load", type=float, default=0.7)
    ap.add_argument("--wait-load-max", type=float, default=600)
    ap.add_argument("--work-dir", default="/var/tmp/mote-hold-bench", help="data dirs (a disk, not tmpfs)")
    ap.add_argument("--out", help="raw JSON results [default: WORK_DIR/hold_bench-DATE.json]")
    ap.add_argument("--from-json", metavar="FILE", help="print the tables of an earlier run")
    a = ap.parse_args()

    if a.from_json:
        with open(a.from_json) as f:
            doc = json.load(f)
        print(f"command: {doc['command']}")
        print(summary(doc["runs"]))
        return 0

    bins = [("mote", a.mote, "")] + ([("mote-base", a.baseline_bin, "")] if a.baseline_bin else [])
    if a.worker_threads:
        bins.append((f"mote[wt={a.worker_threads}]", a.mote, f"worker_threads = {a.worker_threads}\n"))
    for _, exe, _ in bins + [("load", a.load, "")]:
        if not os.access(exe, os.X_OK):
            sys.exit(f"not executable: {exe}")
    os.makedirs(a.work_dir, exist_ok=True)
    if fs_type(a.work_dir) in ("tmpfs", "ramfs"):
        sys.exit(f"--work-dir {a.work_dir} is on tmpfs; the store must be on a disk")
    command = "python3 benches/hold_bench.py " + " ".join(sys.argv[1:])
    info = machine_info(a.mote, a.load, "")
    print(f"command: {command}")
    for k, v in info.items():
        print(f"  {k}: {v}")
    runs, interrupted = [], False
    t0 = time.monotonic()
    try:
        for label, exe, extra in bins:
            runs.append(one_binary(label, exe, a, a.work_dir, extra))
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted; writing what was measured", file=sys.stderr)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = a.out or os.path.join(a.work_dir, f"hold_bench-{stamp}.json")
    with open(out_path, "w") as f:
        json.dump({"command": command, "machine": info, "settings": vars(a), "interrupted": interrupted,
                   "elapsed_secs": round(time.monotonic() - t0, 1), "runs": runs}, f, indent=1)
    print()
    print(summary(runs))
    print(f"\nraw results: {out_path} ({time.monotonic() - t0:.0f} s)")
    return 1 if interrupted or any(r.get("error") for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
