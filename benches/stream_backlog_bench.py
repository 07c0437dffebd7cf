#!/usr/bin/env python3
"""Streams, issue #12: does a reader 10 million messages behind stay within the memory budget?

docs/streams.md: "A reader far behind costs the broker a bounded read-ahead buffer, never
its backlog in memory." This script checks that on one broker:

  `mote --data-dir D --mqtt 127.0.0.1:PORT --fsync never` (a private copy of the binary;
  D under /var/tmp, removed at the end). The stream `backlog` is first declared over MQTT
  (`$admin/stream/backlog`, {"max_bytes": --max-bytes}) because its default max_bytes (1 GiB)
  is smaller than 10M messages: retention would drop the oldest segments and the replay
  could not start at offset 0. Nothing else is changed from the defaults (so a reader's
  window is min(its Receive Maximum, mqtt.max_inflight = 256)).

Phases, the broker's VmRSS / RssAnon / RssFile sampled from /proc/PID/status every 0.5 s
throughout (VmHWM, the kernel's own peak, is read too):

  idle    the broker just started, the stream declared;
  append  one MQTT 5 connection publishes --count messages of --size (64) bytes to
          `$stream/backlog`, QoS 1, --window publishes in flight (the client of
          benches/streams_bench.py, imported from it); every PUBACK checked;
  settle  --settle s after the last PUBACK;
  slow    reader (a): MQTT 5, Receive Maximum 100, SUBSCRIBE QoS 1 to `$stream/backlog`
          with the user property stream-offset=earliest; reads for --slow-secs (30) s,
          sleeping --slow-delay (5 ms) before each batch of PUBACKs (so at most
          100 / 5 ms = 20k msgs/s): millions of messages behind the whole time;
  gap     after reader (a) disconnected;
  fast    reader (b): the same with Receive Maximum 1000, reads the whole stream as fast
          as it can with a PUBACK per message; every delivery's `mote-offset` user
          property is checked: offsets must be 0..count-1, each once (gaps, duplicates,
          out of order counted), and the payload's sequence number must equal its offset.

--timeout bounds the whole run (the broker is stopped and the directory removed anyway).

Usage (from the repository root):
    cargo build --release -p mote-broker
    python3 benches/stream_backlog_bench.py [--count 10000000] [--out FILE.json]
"""

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import streams_bench as sb  # noqa: E402  (the lean asyncio MQTT 5 client and publish())

STREAM = "backlog"
TOPIC = f"$stream/{STREAM}"


# ---------------------------------------------------------------------------------------
# Memory sampling


def read_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024  # kB -> bytes
    return out


class Sampler(threading.Thread):
    """Samples /proc/PID/status every `every` s, each sample tagged with the current phase."""

    def __init__(self, pid, every=0.5):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.phase = "idle"
        self.samples = []  # (t, phase, {VmRSS, RssAnon, RssFile, VmHWM})
        self.stopped = threading.Event()
        self.t0 = time.monotonic()

    def sample(self):
        try:
            s = read_status(self.pid)
        except OSError:
            return None
        self.samples.append((time.monotonic() - self.t0, self.phase, s))
        return s

    def run(self):
        nxt = time.monotonic()
        while not self.stopped.is_set():
            self.sample()
            nxt += self.every
            self.stopped.wait(max(0.0, nxt - time.monotonic()))

    def set_phase(self, phase):
        self.sample()  # the last sample of the previous phase
        self.phase = phase
        self.sample()

    def phase_stats(self, phase):
        xs = [s for _, p, s in self.samples if p == phase]
        if not xs:
            return None
        return {"n": len(xs),
                "first": xs[0], "last": xs[-1],
                "max": {k: max(x[k] for x in xs) for k in xs[0]}}


# ---------------------------------------------------------------------------------------
# Broker


class Broker:
    def __init__(self, exe, work, fsync):
        self.work = work
        self.data = os.path.join(work, "data")
        self.port = sb.free_port()
        self.log = open(os.path.join(work, "mote.log"), "w+")
        self.cmd = [exe, "--data-dir", self.data, "--mqtt", f"127.0.0.1:{self.port}", "--fsync", fsync]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log)
        end = time.monotonic() + 20
        while True:
            self.log.seek(0)
            if re.search(r"listening mqtt=", self.log.read()):
                break
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"mote did not start: {self.tail()}")
            time.sleep(0.02)
        self.addr = ("127.0.0.1", self.port)

    def cpu(self):
        return sb.proc_cpu_secs(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def tail(self):
        return open(self.log.name, errors="replace").read()[-2000:]

    def warnings(self):
        return [line for line in open(self.log.name, errors="replace").read().splitlines()
                if " WARN " in line or " ERROR " in line]


def dir_bytes(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(d, f)).st_blocks * 512
            except OSError:
                pass
    return total


def dir_apparent_bytes(path):
    total, n = 0, 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(d, f))
                n += 1
            except OSError:
                pass
    return total, n


# ---------------------------------------------------------------------------------------
# MQTT pieces not in streams_bench


async def declare_stream(addr, name, decl):
    """PUBLISH QoS 1 the JSON declaration to $admin/stream/NAME; returns the PUBACK reason."""
    c = await sb.Mqtt.connect(addr, "backlog-admin")
    try:
        payload = json.dumps(decl).encode()
        body = sb.mstr(f"$admin/stream/{name}") + (1).to_bytes(2, "big") + b"\x00" + payload
        c.w.write(sb.mpacket(0x32, body))
        while True:
            first, body, _ = await c.read_one(10)
            if first >> 4 == 4:
                return body[2] if len(body) > 2 else 0
    finally:
        c.close()


class Offsets:
    """Which offsets arrived: gaps, duplicates, out of order, payload/offset mismatches."""

    def __init__(self, n):
        self.bits = bytearray(n)
        self.unique = self.dups = self.out_of_order = self.beyond = self.mismatch = self.no_offset = 0
        self.dup_flag = 0
        self.prev = -1
        self.received = 0

    def add(self, off, seq, dup_flag):
        self.received += 1
        if dup_flag:
            self.dup_flag += 1
        if off is None:
            self.no_offset += 1
            return
        if off != self.prev + 1:
            self.out_of_order += 1
        self.prev = off
        if seq != off:
            self.mismatch += 1
        if off >= len(self.bits):
            self.beyond += 1
        elif self.bits[off]:
            self.dups += 1
        else:
            self.bits[off] = 1
            self.unique += 1

    def summary(self, upto=None):
        """Missing offsets in 0..upto-1 (default: all)."""
        upto = len(self.bits) if upto is None else upto
        missing = upto - sum(self.bits[:upto]) if upto else 0
        first_missing = self.bits.find(0, 0, upto) if missing else None
        return {"received": self.received, "unique": self.unique, "missing": missing,
                "first_missing": first_missing, "dups": self.dups, "dup_flag": self.dup_flag,
                "out_of_order": self.out_of_order, "beyond": self.beyond, "payload_offset_mismatch": self.mismatch,
                "no_offset": self.no_offset, "last_offset": self.prev}


OFFSET_KEY = b"\x00\x0bmote-offset"


async def read_stream(addr, client_id, receive_max, offsets, stop, delay=0.0, idle=10.0):
    """Subscribes to TOPIC from the earliest and reads (a PUBACK per message, after `delay`
    s per batch) until `stop()` or nothing came for `idle` s. Returns (secs, messages)."""
    c = await sb.Mqtt.connect(addr, client_id, receive_max=receive_max)
    unpack = sb.SEQ.unpack_from
    try:
        await c.subscribe(TOPIC, 1, [("stream-offset", "earliest")])
        t0 = time.perf_counter()
        t_last = t0
        quiet_since = time.monotonic()
        while not stop():
            got = await c.next(0.2)
            if got is None:
                if time.monotonic() - quiet_since > idle:
                    break
                continue
            buf, packets = got
            acks = []
            for first, s, e in packets:
                if first >> 4 != 3:
                    continue
                i = s + 2 + ((buf[s] << 8) | buf[s + 1])  # after the topic
                if first & 0x06:
                    acks.append(b"\x40\x02" + buf[i:i + 2])
                    i += 2
                pl, i = sb.read_varint(buf, i)
                j = buf.find(OFFSET_KEY, i, i + pl)
                if j >= 0:
                    j += len(OFFSET_KEY)
                    vl = (buf[j] << 8) | buf[j + 1]
                    off = int(buf[j + 2:j + 2 + vl])
                else:
                    off = None
                p = i + pl
                seq = unpack(buf, p)[0] if e - p >= 16 else -1
                offsets.add(off, seq, first & 0x08)
            if acks:
                if delay:
                    await asyncio.sleep(delay)
                c.w.write(b"".join(acks))
                await c.w.drain()
            t_last = time.perf_counter()
            quiet_since = time.monotonic()
        return t_last - t0
    finally:
        c.close()


# ---------------------------------------------------------------------------------------


def mb(x):
    return f"{x / 1e6:,.1f}"


def machine_busy():
    return sb.machine_cpu_secs()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mote", default=os.environ.get("MOTE_BIN", os.path.join(ROOT, "target/release/mote")))
    ap.add_argument("--count", type=int, default=10_000_000, help="messages appended (and replayed by reader b)")
    ap.add_argument("--size", type=int, default=64, help="payload bytes (at least 16)")
    ap.add_argument("--window", type=int, default=256, help="publishes in flight")
    ap.add_argument("--fsync", default="never")
    ap.add_argument("--max-bytes", type=int, default=64 << 30, help="the stream's declared max_bytes")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after the appends before reader (a)")
    ap.add_argument("--slow-secs", type=float, default=30.0, help="how long reader (a) reads")
    ap.add_argument("--slow-rm", type=int, default=100, help="reader (a)'s Receive Maximum")
    ap.add_argument("--slow-delay", type=float, default=0.005, help="s reader (a) waits before each batch of acks")
    ap.add_argument("--fast-rm", type=int, default=1000, help="reader (b)'s Receive Maximum")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole run at most")
    ap.add_argument("--tmp", default="/var/tmp", help="where the data directory goes")
    ap.add_argument("--out", help="also write the results as JSON here")
    a = ap.parse_args()
    a.size = max(a.size, sb.SEQ.size)
    if not os.access(a.mote, os.X_OK):
        sys.exit(f"{a.mote} is missing: cargo build --release -p mote-broker")
    cmdline = "python3 benches/stream_backlog_bench.py " + " ".join(sys.argv[1:])

    def on_alarm(signum, frame):
        raise TimeoutError(f"--timeout {a.timeout:g} s passed")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(a.timeout))

    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="stream-backlog-", dir=a.tmp)
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "git": sb.sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]),
            "dirty": bool(sb.sh(["git", "-C", ROOT, "status", "--porcelain", "--", "broker", "codec"])),
            "mote": sb.sh([a.mote, "--version"]), "python": sys.version.split()[0],
            "load": open("/proc/loadavg").read().split()[0], "nproc": os.cpu_count()}
    with open(a.mote, "rb") as f:
        info["sha256"] = hashlib.sha256(f.read()).hexdigest()[:12]
    info["built"] = datetime.datetime.fromtimestamp(os.path.getmtime(a.mote), datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
    res = {"args": vars(a), "cmd": cmdline, "info": info, "problems": []}
    broker = sampler = None
    phases = {}  # phase -> {secs, broker_cpu, machine_busy, self_cpu}

    def begin(phase):
        sampler.set_phase(phase)
        busy, total = machine_busy()
        phases[phase] = {"t0": time.monotonic(), "cpu0": broker.cpu(), "busy0": busy, "total0": total,
                         "self0": sb.self_cpu_secs()}

    def end(phase):
        p = phases[phase]
        busy, total = machine_busy()
        secs = time.monotonic() - p.pop("t0")
        cpu = broker.cpu() - p.pop("cpu0")
        mine = sb.self_cpu_secs() - p.pop("self0")
        other = (busy - p.pop("busy0")) - cpu - mine
        p.update(secs=round(secs, 2), broker_cpu_secs=round(cpu, 2), client_cpu_secs=round(mine, 2),
                 foreign_cpu=round(max(other, 0.0) / max(total - p.pop("total0"), 1e-9), 3))

    try:
        exe = os.path.join(work, "mote-binary")  # a private copy: a rebuild during the run changes nothing
        shutil.copy2(a.mote, exe)
        broker = Broker(exe, work, a.fsync)
        res["broker_cmd"] = " ".join(broker.cmd)
        sampler = Sampler(broker.proc.pid)
        sampler.start()
        print(f"broker pid {broker.proc.pid} on {broker.addr}, data {broker.data}", file=sys.stderr)
        rc = asyncio.run(declare_stream(broker.addr, STREAM, {"max_bytes": a.max_bytes}))
        res["declare_puback"] = rc
        if rc != 0:
            raise RuntimeError(f"declaring the stream: PUBACK 0x{rc:02x}")
        begin("idle")
        time.sleep(2.0)
        end("idle")

        # Appends
        begin("append")
        remaining = a.timeout - (time.monotonic() - started)
        r = asyncio.run(sb.publish("mqtt", broker.addr, [TOPIC], a.count, a.window, a.size, None, "backlog-pub",
                                   timeout=max(60.0, remaining - 120)))
        end("append")
        res["append"] = {k: r[k] for k in ("sent", "acked", "failed", "unacked", "lost", "errors")}
        res["append"]["secs"] = round(r["secs"], 2)
        res["append"]["msgs_per_sec"] = r["acked"] / r["secs"]
        print(f"append {json.dumps(res['append'])}", file=sys.stderr)
        if r["acked"] != a.count:
            res["problems"].append(f"append: {r['acked']:,} of {a.count:,} acknowledged ({r['errors']})")
        stored = r["acked"]

        begin("settle")
        time.sleep(a.settle)
        end("settle")
        res["disk"] = {"stream_bytes": dir_bytes(os.path.join(broker.data, "streams", STREAM)),
                       "stream_apparent_bytes": dir_apparent_bytes(os.path.join(broker.data, "streams", STREAM))[0],
                       "stream_files": dir_apparent_bytes(os.path.join(broker.data, "streams", STREAM))[1],
                       "data_dir_bytes": dir_bytes(broker.data)}
        print(f"disk {json.dumps(res['disk'])}", file=sys.stderr)

        # (a) the slow reader
        slow = Offsets(stored)
        begin("slow")
        t_end = time.monotonic() + a.slow_secs
        secs = asyncio.run(read_stream(broker.addr, "backlog-slow", a.slow_rm, slow, lambda: time.monotonic() >= t_end,
                                       delay=a.slow_delay))
        end("slow")
        s = slow.summary(upto=slow.prev + 1 if slow.prev >= 0 else 0)
        s["secs"] = round(secs, 2)
        s["msgs_per_sec"] = slow.received / max(secs, 1e-9)
        s["behind_at_end"] = stored - (slow.prev + 1)
        res["slow"] = s
        print(f"slow {json.dumps(s)}", file=sys.stderr)

        begin("gap")
        time.sleep(3.0)
        end("gap")

        # (b) the fast reader, the whole stream
        fast = Offsets(stored)
        begin("fast")
        remaining = a.timeout - (time.monotonic() - started)
        t_end = time.monotonic() + max(30.0, remaining - 30)
        secs = asyncio.run(read_stream(broker.addr, "backlog-fast", a.fast_rm, fast,
                                       lambda: fast.unique >= stored or time.monotonic() >= t_end))
        end("fast")
        f = fast.summary()
        f["secs"] = round(secs, 2)
        f["msgs_per_sec"] = fast.received / max(secs, 1e-9)
        res["fast"] = f
        print(f"fast {json.dumps(f)}", file=sys.stderr)
        for k in ("missing", "dups", "out_of_order", "beyond", "payload_offset_mismatch", "no_offset"):
            if f[k]:
                res["problems"].append(f"replay: {k} = {f[k]:,}")
        begin("end")
        time.sleep(1.0)
        end("end")
        res["warnings"] = broker.warnings()[:20]
    except BaseException as e:  # noqa: BLE001 (reported, then cleaned up)
        res["problems"].append(f"aborted: {e!r}")
        print(f"aborted: {e!r}", file=sys.stderr)
    finally:
        signal.alarm(0)
        if sampler:
            sampler.stopped.set()
            sampler.join(2)
        if broker:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    res["phases"] = phases
    res["memory"] = {p: sampler.phase_stats(p) for p in ("idle", "append", "settle", "slow", "gap", "fast", "end")} \
        if sampler else {}
    res["samples"] = [(round(t, 2), p, s["VmRSS"], s["RssAnon"], s["RssFile"]) for t, p, s in sampler.samples] \
        if sampler else []
    res["secs"] = round(time.monotonic() - started, 1)
    print(report(res, a))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)


def report(res, a):
    out = [f"```\n{res['cmd']}\n```", "",
           f"broker: `{res.get('broker_cmd', '?')}`; {res['info']['mote']} (git {res['info']['git']}"
           f"{' + uncommitted broker/ changes' if res['info']['dirty'] else ''}, sha256 {res['info']['sha256']}…, "
           f"built {res['info']['built']}); {res['info']['nproc']} CPUs, load {res['info']['load']} at the start; "
           f"{res['secs']:.0f} s in all.", ""]
    mem = res.get("memory", {})

    def row(label, phase, which):
        st = mem.get(phase)
        if not st:
            return f"| {label} | – | – | – |"
        v = st[which]
        return f"| {label} | {mb(v['VmRSS'])} | {mb(v['RssAnon'])} | {mb(v['RssFile'])} |"
    out += ["| broker memory (MB) | VmRSS | RssAnon | RssFile |", "|---|---:|---:|---:|",
            row("before the appends (idle, last sample)", "idle", "last"),
            row("max during the appends", "append", "max"),
            row("after the appends (settled, last sample)", "settle", "last"),
            row("max during (a), slow reader far behind", "slow", "max"),
            row("max during (b), full replay", "fast", "max"),
            row("at the end", "end", "last")]
    end = mem.get("end") or mem.get("fast") or {}
    if end:
        out.append(f"\nVmHWM (the kernel's peak RSS over the whole run): {mb(end['last']['VmHWM'])} MB; "
                   f"{len(res.get('samples', []))} samples.")
    out.append("")
    ap_ = res.get("append", {})
    disk = res.get("disk", {})
    sl, fa = res.get("slow", {}), res.get("fast", {})
    ph = res.get("phases", {})
    lines = ["| figure | value |", "|---|---:|"]
    if ap_:
        lines += [f"| appended (acked / sent) | {ap_['acked']:,} / {ap_['sent']:,} |",
                  f"| append rate (window {a.window}, QoS 1) | {ap_['msgs_per_sec']:,.0f} msgs/s "
                  f"({ap_['secs']:.1f} s) |"]
    if disk:
        n = max(ap_.get("acked", 1), 1)
        lines += [f"| stream on disk | {mb(disk['stream_bytes'])} MB in {disk['stream_files']} files "
                  f"({disk['stream_bytes'] / n:.1f} B/msg); data dir {mb(disk['data_dir_bytes'])} MB |"]
    if sl:
        lines += [f"| (a) slow reader: read in {sl['secs']:.1f} s | {sl['received']:,} ({sl['msgs_per_sec']:,.0f} msgs/s), "
                  f"still {sl['behind_at_end']:,} behind at the end; gaps {sl['missing']}, dups {sl['dups']} |"]
    if fa:
        lines += [f"| (b) replay rate (Receive Maximum {a.fast_rm}) | {fa['msgs_per_sec']:,.0f} msgs/s "
                  f"({fa['received']:,} in {fa['secs']:.1f} s) |",
                  f"| (b) offsets | {fa['unique']:,} unique of {ap_.get('acked', 0):,}; missing {fa['missing']:,}, "
                  f"duplicates {fa['dups']:,}, out of order {fa['out_of_order']:,}, DUP flag {fa['dup_flag']:,}, "
                  f"payload seq ≠ offset {fa['payload_offset_mismatch']:,}, last offset {fa['last_offset']:,} |"]
    for p in ("append", "slow", "fast"):
        if p in ph and "secs" in ph[p]:
            lines.append(f"| CPU during {p} | broker {ph[p]['broker_cpu_secs']:.1f} s, client "
                         f"{ph[p]['client_cpu_secs']:.1f} s, other processes {ph[p]['foreign_cpu']:.0%} of the "
                         f"machine, over {ph[p]['secs']:.1f} s |")
    out += lines + [""]
    if res["problems"] or res.get("warnings"):
        out += ["Problems:"] + [f"- {p}" for p in res["problems"]] + [f"- log: {w}" for w in res.get("warnings", [])]
    return "\n".join(out)


if __name__ == "__main__":
    main()
