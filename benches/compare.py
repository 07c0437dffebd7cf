#!/usr/bin/env python3
"""Side-by-side: mote --memory, Mosquitto, rumqttd and nats-server (issue #15).

Every measurement starts a fresh broker on a free loopback port, drives it with
`mqtt-load` (benches/load: the same generator for every broker; raw MQTT 3.1.1 over
mote-codec, or with `--proto nats` the core NATS text protocol), and stops it again.
Each round runs every scenario on every broker, the scenarios interleaved and the
broker order reversed from one round to the next. Reported: the median (min–max) over
the rounds, the messages lost next to every figure, and the ratios mote ÷ peer.

Scenarios (64-byte payloads)
  fan-in      QoS 0, 8 publishers (one topic each, `load/<i>`) -> 1 subscriber of the
              wildcard `load/#` (NATS `load.>`); delivered msgs/s.
  fan-out     QoS 0, 1 publisher -> 16 subscribers of `load/shared`; delivered msgs/s
              (all subscribers together).
  pairs       QoS 1, 8 pairs (publisher i -> subscriber i, `load/<i>`), 100 in flight
              per publisher; delivered msgs/s. MQTT only (core NATS has no QoS 1: n/a).
  latency     QoS 0 fan-in 8 -> 1 at a fixed 10,000 msgs/s (8 x 1,250/s); end-to-end
              p50/p99 of every delivery.
  idle        5,000 idle connections (CONNECT, nothing else); broker RSS growth
              (VmRSS from /proc/PID/status) divided by the count.
  fanout-large (not in the default set) fan-out QoS 0, 1 -> 16 as above with 16 KiB
              payloads (--large-size), 20,000 messages (--large-count): what sharing
              a payload among its receivers instead of copying it saves.
  wide        QoS 0 fan-in 8 -> 1 with 1,000 and with 100,000 extra wildcard
              subscriptions (`+/w<j>/#`, `wide/<j>/+`; 100 connections hold them) that
              match nothing published; the throughput ratio 100k ÷ 1k per broker.

Broker settings (each made not to drop what the scenarios send)
  mote        --memory, --log warn (--mote-log); max_queued_messages 1,000,000, max_queued_bytes and the memory
              queue budget 4 GiB, max_inflight 1000, max_connections 20,000.
  Mosquitto   user root, max_inflight_messages 1000, max_queued_messages 1,000,000,
              set_tcp_nodelay true, persistence false.
  rumqttd     one v4 listener; max_connections 20,000, max_inflight_count 1000,
              commit log segments 100 MiB x 50, next_connection_delay_ms 0.
  nats-server defaults (max_pending 64 MiB per client: a subscriber that falls further
              behind is cut off as a slow consumer, which shows as loss).

Every MQTT client announces Keep Alive 600 s (rumqttd refuses 0) and never pings.
The load generator shares the machine's cores with the broker.

Usage (from the repository root):
    cargo build --release -p mote-broker -p mote-load
    nice -n 10 cargo install rumqttd --root target/peers     # optional peer
    flock /tmp/mote-bench.lock python3 benches/compare.py [--rounds 3] [--quick]
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 1024 ** 3
KEEP_ALIVE = "600"

BROKERS = ("mote", "mosquitto", "rumqttd", "nats-server")

# --------------------------------------------------------------------------------------
# Processes

LIVE = []  # every child process started and not yet reaped


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"broker on port {port} did not listen within {timeout}s")


def spawn(cmd, **kw):
    p = subprocess.Popen(cmd, **kw)
    LIVE.append(p)
    return p


def reap(proc, timeout=15.0):
    """SIGTERM, wait, SIGKILL if needed; by PID only."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except ProcessLookupError:
            pass
    else:
        proc.wait()
    if proc in LIVE:
        LIVE.remove(proc)


def reap_all():
    for p in list(LIVE):
        reap(p, timeout=5)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_cpu_secs():
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def proc_cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def children_cpu_ticks():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * CLK_TCK


class Broker:
    """One broker kind; `start` returns the address of a fresh process."""

    proto = "mqtt"

    def __init__(self, name, exe):
        self.name, self.exe = name, exe
        self.proc = None
        self.log = None

    def command(self, port, run_dir):
        raise NotImplementedError

    def start(self, run_dir):
        port = free_port()
        cmd = self.command(port, run_dir)
        self.log = open(os.path.join(run_dir, f"{self.name}.log"), "w")
        self.proc = spawn(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                          cwd=run_dir)
        wait_port(port, self.proc)
        return f"127.0.0.1:{port}"

    def pid(self):
        return self.proc.pid

    def stop(self):
        reap(self.proc)
        self.proc = None
        if self.log:
            self.log.close()
            self.log = None

    def version(self):
        return ""


class Mote(Broker):
    # The log level mote runs at (`--mote-log`): warn, like the peers' configurations;
    # info is mote's default.
    log_level = "warn"

    CONFIG = ("[mqtt]\nmax_queued_messages = 1000000\nmax_queued_bytes = 4294967296\n"
              "max_inflight = 1000\nmax_connections = 20000\n"
              "[storage]\nqueue_memory_bytes = 4294967296\n")

    def command(self, port, run_dir):
        cfg = os.path.join(run_dir, "mote.toml")
        with open(cfg, "w") as f:
            f.write(self.CONFIG)
        return [self.exe, "--memory", "--mqtt", f"127.0.0.1:{port}", "--config", cfg, "--log", self.log_level]

    def version(self):
        return sh([self.exe, "--version"])


class Mosquitto(Broker):
    def command(self, port, run_dir):
        cfg = os.path.join(run_dir, "mosquitto.conf")
        text = (f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\n"
                "max_queued_messages 1000000\nset_tcp_nodelay true\npersistence false\n"
                "log_dest stderr\nlog_type error\nlog_type warning\n")
        if os.geteuid() == 0:
            text += "user root\n"
        with open(cfg, "w") as f:
            f.write(text)
        return [self.exe, "-c", cfg]

    def version(self):
        out = subprocess.run([self.exe, "-h"], capture_output=True, text=True).stdout
        return out.splitlines()[0] if out else ""


class Rumqttd(Broker):
    def command(self, port, run_dir):
        cfg = os.path.join(run_dir, "rumqttd.toml")
        with open(cfg, "w") as f:
            f.write(f"""id = 0
[router]
id = 0
max_connections = 20000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 50
[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 1000
    dynamic_filters = true
""")
        return [self.exe, "-q", "-c", cfg]

    def version(self):
        return sh([self.exe, "--version"])


class Nats(Broker):
    proto = "nats"

    def command(self, port, run_dir):
        return [self.exe, "-a", "127.0.0.1", "-p", str(port)]

    def version(self):
        return sh([self.exe, "--version"])


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# --------------------------------------------------------------------------------------
# Scenarios


class Scenario:
    def __init__(self, key, label, args, metric, unit, higher_better, mqtt_only=False, kind="load"):
        self.key, self.label, self.args = key, label, args
        self.metric, self.unit, self.higher_better = metric, unit, higher_better
        self.mqtt_only, self.kind = mqtt_only, kind


def scenarios(a):
    fanin = ["--publishers", "8", "--subscribers", "1", "--topic-per-publisher", "--qos", "0", "--size", "64"]
    out = [
        Scenario("fanin", f"fan-in QoS 0, 8→1 (load/#), {8 * a.fanin_count:,} msgs",
                 fanin + ["--count", str(a.fanin_count)], "delivered msg/s", "msg/s", True),
        Scenario("fanout", f"fan-out QoS 0, 1→16, {a.fanout_count:,} msgs × 16",
                 ["--publishers", "1", "--subscribers", "16", "--qos", "0", "--size", "64",
                  "--count", str(a.fanout_count)], "delivered msg/s", "msg/s", True),
        Scenario("fanout-large", f"fan-out QoS 0, 1→16, {a.large_size:,}-byte payloads, "
                 f"{a.large_count:,} msgs × 16",
                 ["--publishers", "1", "--subscribers", "16", "--qos", "0", "--size", str(a.large_size),
                  "--count", str(a.large_count)], "delivered msg/s", "msg/s", True),
        Scenario("pairs", f"pairs QoS 1, 8 pairs, 100 in flight, {8 * a.pairs_count:,} msgs",
                 ["--publishers", "8", "--subscribers", "8", "--pairs", "--qos", "1", "--inflight", "100",
                  "--size", "64", "--count", str(a.pairs_count)], "delivered msg/s", "msg/s", True,
                 mqtt_only=True),
        Scenario("latency", f"latency QoS 0 fan-in 8→1 at {a.rate:,.0f} msg/s, {a.latency_secs:g} s",
                 fanin + ["--rate", str(a.rate / 8), "--duration", str(a.latency_secs)], "p99 µs", "µs", False),
        Scenario("idle", f"{a.idle:,} idle connections", ["--idle", str(a.idle), "--qos", "0",
                                                          "--connect-concurrency", "32", "--hold", "120"],
                 "RSS bytes/conn", "B", False, kind="idle"),
        Scenario("wide-small", f"fan-in QoS 0 8→1 + {a.wide_small:,} wildcard subs, {8 * a.wide_count:,} msgs",
                 fanin + ["--count", str(a.wide_count), "--extra-subs", str(a.wide_small),
                          "--connect-concurrency", "16"], "delivered msg/s", "msg/s", True),
        Scenario("wide-large", f"fan-in QoS 0 8→1 + {a.wide_large:,} wildcard subs, {8 * a.wide_count:,} msgs",
                 fanin + ["--count", str(a.wide_count), "--extra-subs", str(a.wide_large),
                          "--connect-concurrency", "16"], "delivered msg/s", "msg/s", True),
    ]
    return [s for s in out if s.key in a.scenarios or (s.key.startswith("wide") and "wide" in a.scenarios)]


def load_cmd(a, broker, addr, sc):
    cmd = [a.load, "--broker", addr, "--json", "--timeout", str(a.run_timeout)]
    if broker.proto == "nats":
        cmd += ["--proto", "nats"]
    else:
        cmd += ["--keep-alive", KEEP_ALIVE]
    return cmd + sc.args


def parse_last_json(text):
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def run_load(cmd, timeout):
    p = spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        err += f"\nmqtt-load killed after {timeout}s"
    reap(p)
    return p.returncode, parse_last_json(out), err.strip()


def run_idle(cmd, broker, timeout):
    """Idle scenario: RSS before, mqtt-load opens the connections and says so, RSS after
    a settle, then stdin is closed and mqtt-load closes them."""
    time.sleep(1.0)
    before = rss_kib(broker.pid())
    p = spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = {}
    killer = threading.Timer(timeout, p.kill)
    killer.start()
    try:
        line = p.stdout.readline()
        try:
            ready = json.loads(line) if line.strip() else {}
        except ValueError:
            ready = {}
        after = None
        if "idle_ready" in ready:
            # Let the broker finish what the connections set off, then take the larger of
            # two samples a second apart.
            time.sleep(2.0)
            a1 = rss_kib(broker.pid())
            time.sleep(1.0)
            a2 = rss_kib(broker.pid())
            after = max(v for v in (a1, a2) if v is not None) if (a1 or a2) else None
        out, err = p.communicate(input="", timeout=timeout)  # stdin closes: the hold ends
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    finally:
        killer.cancel()
    reap(p)
    report = parse_last_json(out) or {}
    report["rss_before_kib"] = before
    report["rss_after_kib"] = after
    report["ready"] = ready
    n = ready.get("idle_ready") or 0
    if before is not None and after is not None and n:
        report["bytes_per_conn"] = (after - before) * 1024 / n
    return p.returncode, report, (err or "").strip()


def metric_of(sc, report):
    if not report:
        return None
    if sc.kind == "idle":
        return report.get("bytes_per_conn")
    if sc.key == "latency":
        return (report.get("latency_us") or {}).get("p99")
    return (report.get("delivery") or {}).get("msgs_per_sec")


def lost_of(sc, report):
    if not report or sc.kind == "idle":
        return 0
    d = report.get("delivery") or {}
    return d.get("lost", 0) or 0


def measure(a, broker, sc, rnd, work):
    run_dir = tempfile.mkdtemp(prefix=f"{broker.name}-{sc.key}-", dir=work)
    rec = {"scenario": sc.key, "broker": broker.name, "round": rnd}
    for attempt in range(1 + a.retries):
        try:
            addr = broker.start(run_dir)
            # A broker's own counters, read around the load (cores.py: mote's lock time).
            counters = getattr(broker, "counters", None)
            c0 = counters() if counters else None
            busy0, total0 = machine_cpu_secs()
            b0, l0 = proc_cpu_ticks(broker.pid()), children_cpu_ticks()
            cmd = load_cmd(a, broker, addr, sc)
            t0 = time.monotonic()
            if sc.kind == "idle":
                rc, report, err = run_idle(cmd, broker, a.run_timeout + 30)
            else:
                rc, report, err = run_load(cmd, a.run_timeout + 30)
            secs = time.monotonic() - t0
            busy1, total1 = machine_cpu_secs()
            b1, l1 = proc_cpu_ticks(broker.pid()), children_cpu_ticks()
            alive = broker.proc.poll() is None
            if c0 is not None:
                c1 = counters()
                rec["counters"] = {k: round(c1[k] - c0[k], 6) for k in c0 if k in c1}
        finally:
            broker.stop()
        foreign = ((busy1 - busy0) - (b1 - b0) - (l1 - l0)) / max(1, total1 - total0)
        rec.update(rc=rc, report=report, stderr=err[-2000:], secs=round(secs, 2), attempts=attempt + 1,
                   broker_alive=alive, foreign_cpu=round(foreign, 3),
                   broker_cpu_secs=round((b1 - b0) / CLK_TCK, 2), load_cpu_secs=round((l1 - l0) / CLK_TCK, 2))
        if foreign <= a.max_foreign or attempt == a.retries:
            break
        print(f"    other processes used {foreign:.0%} of the machine; again in {a.retry_wait:g} s", flush=True)
        time.sleep(a.retry_wait)
    rec["value"] = metric_of(sc, report)
    rec["lost"] = lost_of(sc, report)
    d = (report or {}).get("delivery") or {}
    rec["received"] = d.get("received")
    rec["problems"] = (report or {}).get("problems") or ([(report or {}).get("error")] if (report or {}).get("error") else [])
    if rc not in (0, 2) or rec["value"] is None:
        rec["failed"] = True
        rec["problems"] = rec["problems"] + [f"exit {rc}: {err[-300:]}"]
    shutil.rmtree(run_dir, ignore_errors=True)
    return rec


# --------------------------------------------------------------------------------------
# Tables


def fmt_val(v, unit):
    if v is None:
        return "–"
    if unit == "msg/s":
        return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k"
    if unit == "µs":
        return f"{v / 1000:.1f} ms" if v >= 10000 else f"{v:.0f} µs"
    if unit == "B":
        return f"{v:,.0f} B"
    return f"{v:g}"


def cell(results, sc, broker):
    runs = [r for r in results if r["scenario"] == sc.key and r["broker"] == broker]
    if sc.mqtt_only and broker == "nats-server":
        return "n/a (no QoS 1 in core NATS)", None
    if not runs:
        return "not run", None
    vals = [r["value"] for r in runs if r.get("value") is not None]
    failed = [r for r in runs if r.get("failed")]
    if not vals:
        return f"failed ({len(failed)}/{len(runs)})", None
    med = statistics.median(vals)
    text = fmt_val(med, sc.unit)
    if len(vals) > 1:
        text += f" ({fmt_val(min(vals), sc.unit)}–{fmt_val(max(vals), sc.unit)})"
    if sc.kind != "idle":
        lossy = [r for r in runs if r.get("lost")]
        if lossy:
            worst = max(r["lost"] for r in lossy)
            text += f" **LOSS: {len(lossy)}/{len(runs)} runs, up to {worst:,} msgs**"
        else:
            text += " · 0 lost"
    cut = [r for r in runs if any("closed" in p or "subscriber" in p for p in r.get("problems", []))]
    if cut:
        text += f" ({len(cut)} run(s) with a connection cut)"
    if failed:
        text += f" [{len(failed)} failed]"
    return text, med


def ratio_text(m, p, higher_better):
    if m is None or p is None or p == 0:
        return "–"
    r = m / p
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.4f}×"


def table(results, scs, brokers):
    head = "| scenario | metric | " + " | ".join(brokers) + " | " + " | ".join(
        f"mote ÷ {b}" for b in brokers if b != "mote") + " |"
    out = [head, "|---|---|" + "---|" * len(brokers) + "---:|" * (len(brokers) - 1)]
    meds = {}
    for sc in scs:
        cells, vals = [], {}
        for b in brokers:
            t, m = cell(results, sc, b)
            cells.append(t)
            vals[b] = m
        meds[sc.key] = vals
        direction = "higher is better" if sc.higher_better else "lower is better"
        ratios = [ratio_text(vals.get("mote"), vals.get(b), sc.higher_better) for b in brokers if b != "mote"]
        out.append(f"| {sc.label} | {sc.metric} ({direction}) | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(out), meds


def wide_table(meds, brokers, a):
    if "wide-small" not in meds or "wide-large" not in meds:
        return ""
    out = [f"| broker | + {a.wide_small:,} subs | + {a.wide_large:,} subs | ratio {a.wide_large:,} ÷ "
           f"{a.wide_small:,} |", "|---|---:|---:|---:|"]
    for b in brokers:
        s, l = meds["wide-small"].get(b), meds["wide-large"].get(b)
        r = f"{l / s:.2f}" if s and l else "–"
        out.append(f"| {b} | {fmt_val(s, 'msg/s')} | {fmt_val(l, 'msg/s')} | {r} |")
    return "\n".join(out)


def cpu_table(results, scs, brokers):
    """Broker and load-generator CPU time per delivered message (median over the rounds):
    on a 2-core machine the two compete, so throughput alone hides what each one costs."""
    out = ["| scenario | " + " | ".join(f"{b} broker / mqtt-load" for b in brokers) + " |",
           "|---|" + "---:|" * len(brokers)]
    for sc in scs:
        if sc.unit != "msg/s":
            continue
        cells = []
        for b in brokers:
            runs = [r for r in results if r["scenario"] == sc.key and r["broker"] == b and r.get("received")]
            if not runs:
                cells.append("–")
                continue
            bc = statistics.median(r["broker_cpu_secs"] / r["received"] * 1e6 for r in runs)
            lc = statistics.median(r["load_cpu_secs"] / r["received"] * 1e6 for r in runs)
            cells.append(f"{bc:.2f} / {lc:.2f}")
        out.append(f"| {sc.label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def lost_in(results, key, broker):
    runs = [r for r in results if r["scenario"] == key and r["broker"] == broker]
    return sum(1 for r in runs if r.get("lost")), len(runs)


def goals(results, meds):
    out = []

    def ratio(key, peer):
        m, p = meds.get(key, {}).get("mote"), meds.get(key, {}).get(peer)
        return (m / p) if m and p else None

    for key, name in (("fanin", "fan-in"), ("fanout", "fan-out")):
        r = ratio(key, "nats-server")
        lossy, n = lost_in(results, key, "mote")
        nl, nn = lost_in(results, key, "nats-server")
        if r is None:
            out.append(f"- {name} ≥ 0.8× nats-server with zero loss: not measured")
            continue
        ok = r >= 0.8 and lossy == 0
        out.append(f"- {name} ≥ 0.8× nats-server with zero loss: **{'met' if ok else 'missed'}** — "
                   f"mote ÷ nats-server = {r:.2f}×; mote lost messages in {lossy}/{n} runs, "
                   f"nats-server in {nl}/{nn}")
    r = ratio("pairs", "rumqttd")
    out.append("- pairs QoS 1 ≥ 2× rumqttd: " + ("not measured" if r is None else
               f"**{'met' if r >= 2 else 'missed'}** — mote ÷ rumqttd = {r:.2f}×"))
    m, p = meds.get("latency", {}).get("mote"), meds.get("latency", {}).get("mosquitto")
    out.append("- p99 at 10k msg/s ≤ Mosquitto's: " + ("not measured" if not (m and p) else
               f"**{'met' if m <= p else 'missed'}** — mote {fmt_val(m, 'µs')} vs Mosquitto {fmt_val(p, 'µs')}"))
    m = meds.get("idle", {}).get("mote")
    out.append("- ≤ 1 KiB per idle connection: " + ("not measured" if m is None else
               f"**{'met' if m <= 1024 else 'missed'}** — mote {m:,.0f} B per connection"))
    return "\n".join(out)


def render(doc):
    a = argparse.Namespace(**doc["settings"])
    results = doc["runs"]
    brokers = [b for b in BROKERS if any(r["broker"] == b for r in results)]
    scs = scenarios(a)
    t, meds = table(results, scs, brokers)
    parts = [f"command: `{doc['command']}`", "",
             "versions: " + "; ".join(f"{k}: {v}" for k, v in doc["versions"].items()), "",
             "Median (min–max) over the rounds; loss next to every figure (QoS 0 loss is "
             "allowed by the protocol, but counted). Ratios are of the medians: for msg/s above 1 "
             "favours mote, for latency and bytes below 1 does.", "", t, ""]
    w = wide_table(meds, brokers, a)
    if w:
        parts += ["Wide routing (throughput with the large table ÷ with the small one):", "", w, ""]
    parts += ["CPU µs per delivered message (broker / load generator), medians; CPU time is "
              "counted in 10 ms ticks, so short runs are coarse:", "", cpu_table(results, scs, brokers), ""]
    parts += ["Goals:", "", goals(results, meds), ""]
    fr = sorted(r.get("foreign_cpu", 0.0) for r in results)
    if fr:
        parts.append(f"CPU used by other processes during the runs: median {statistics.median(fr):.1%}, "
                     f"max {fr[-1]:.1%} of the machine; {sum(r.get('attempts', 1) - 1 for r in results)} repeats.")
    probs = [(r["scenario"], r["broker"], r["round"], p) for r in results for p in r.get("problems", [])
             if "allowed at QoS 0" not in p]
    if probs:
        parts += ["", "Problems reported by the load generator:", ""]
        parts += [f"- {s} / {b} / round {n}: {p}" for s, b, n, p in probs[:40]]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------


def interrupt_on_signals():
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def find_exe(*cands):
    for c in cands:
        if c and os.access(c, os.X_OK):
            return c
        w = shutil.which(c) if c else None
        if w:
            return w
    return None


def main():
    interrupt_on_signals()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mote", default=os.path.join(ROOT, "target", "release", "mote"))
    ap.add_argument("--mote-log", default="warn",
                    help="mote's log level (default warn, as the peers are configured; mote's own default is info)")
    ap.add_argument("--load", default=os.path.join(ROOT, "target", "release", "mqtt-load"))
    ap.add_argument("--mosquitto", default=find_exe("mosquitto", "/usr/sbin/mosquitto"))
    ap.add_argument("--rumqttd", default=find_exe(os.path.join(ROOT, "target", "peers", "bin", "rumqttd"), "rumqttd"))
    ap.add_argument("--nats-server", default=find_exe("nats-server", "/usr/sbin/nats-server"))
    ap.add_argument("--brokers", nargs="+", choices=BROKERS, default=list(BROKERS))
    ap.add_argument("--scenarios", nargs="+", default=["fanin", "fanout", "pairs", "latency", "idle", "wide"],
                    choices=["fanin", "fanout", "fanout-large", "pairs", "latency", "idle", "wide"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke test: one round, small counts")
    ap.add_argument("--fanin-count", type=int, default=300000, help="messages per publisher (8), fan-in")
    ap.add_argument("--fanout-count", type=int, default=150000, help="messages of the publisher, fan-out (×16)")
    ap.add_argument("--pairs-count", type=int, default=50000, help="messages per pair (8), QoS 1 pairs")
    ap.add_argument("--large-size", type=int, default=16384, help="payload bytes, fanout-large")
    ap.add_argument("--large-count", type=int, default=20000, help="messages of the publisher, fanout-large (×16)")
    ap.add_argument("--rate", type=float, default=10000, help="total msgs/s of the latency scenario")
    ap.add_argument("--latency-secs", type=float, default=10)
    ap.add_argument("--idle", type=int, default=5000, help="idle connections")
    ap.add_argument("--wide-small", type=int, default=1000)
    ap.add_argument("--wide-large", type=int, default=100000)
    ap.add_argument("--wide-count", type=int, default=100000, help="messages per publisher (8), wide routing")
    ap.add_argument("--max-foreign", type=float, default=0.15,
                    help="repeat a run when other processes used more than this fraction of the CPU")
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--retry-wait", type=float, default=10)
    ap.add_argument("--run-timeout", type=int, default=300, help="seconds allowed for one mqtt-load run")
    ap.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "mote-compare"))
    ap.add_argument("--out", help="raw JSON results [default: WORK_DIR/compare-DATE.json]")
    ap.add_argument("--from-json", metavar="FILE", help="measure nothing: print the tables of an earlier run")
    a = ap.parse_args()

    if a.from_json:
        with open(a.from_json) as f:
            print(render(json.load(f)))
        return 0
    if a.quick:
        a.rounds = 1
        a.fanin_count, a.fanout_count, a.pairs_count = 20000, 10000, 5000
        a.large_count = 2000
        a.latency_secs, a.idle = 2, 500
        a.wide_small, a.wide_large, a.wide_count = 100, 5000, 10000

    Mote.log_level = a.mote_log
    exes = {"mote": a.mote, "mosquitto": a.mosquitto, "rumqttd": a.rumqttd, "nats-server": a.nats_server}
    kinds = {"mote": Mote, "mosquitto": Mosquitto, "rumqttd": Rumqttd, "nats-server": Nats}
    if not (a.load and os.access(a.load, os.X_OK)):
        sys.exit(f"not executable: {a.load} (cargo build --release -p mote-broker -p mote-load)")
    brokers, missing = [], []
    for name in a.brokers:
        exe = exes[name]
        if exe and os.access(exe, os.X_OK):
            brokers.append(kinds[name](name, exe))
        else:
            missing.append(name)
    for name in missing:
        print(f"{name}: no executable found; running without it", file=sys.stderr)
    nofile = raise_nofile()
    if "idle" in a.scenarios and nofile < a.idle + 200:
        sys.exit(f"open-file limit {nofile} is too low for {a.idle} idle connections")

    os.makedirs(a.work_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = a.out or os.path.join(a.work_dir, f"compare-{stamp}.json")
    versions = {b.name: b.version() for b in brokers}
    versions["mote commit"] = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    versions["machine"] = f"{os.cpu_count()} cores, {platform.release()}"
    command = "python3 benches/compare.py " + " ".join(sys.argv[1:])
    print(f"command: {command}")
    for k, v in versions.items():
        print(f"  {k}: {v}")
    scs = scenarios(a)
    results = []
    t0 = time.monotonic()
    interrupted = False
    try:
        for rnd in range(a.rounds):
            order = brokers if rnd % 2 == 0 else list(reversed(brokers))
            for sc in scs:
                for b in order:
                    if sc.mqtt_only and b.proto != "mqtt":
                        continue
                    rec = measure(a, b, sc, rnd, a.work_dir)
                    results.append(rec)
                    v = fmt_val(rec["value"], sc.unit)
                    print(f"round {rnd + 1}/{a.rounds}  {sc.key:<10} {b.name:<12} {v:>12}  lost {rec['lost']:,}"
                          f"  ({rec['secs']} s, other CPU {max(0.0, rec['foreign_cpu']):.0%})"
                          + (f"  problems: {rec['problems']}" if rec.get("problems") else ""), flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted; writing what was measured", file=sys.stderr)
    finally:
        reap_all()

    doc = {"command": command, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "versions": versions, "elapsed_secs": round(time.monotonic() - t0, 1), "settings": vars(a),
           "interrupted": interrupted, "missing": missing, "runs": results}
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=1)
    print()
    print(render(doc))
    if missing:
        print(f"\nnot run (no executable): {', '.join(missing)}")
    print(f"\nraw results: {out_path} ({len(results)} runs, {time.monotonic() - t0:.0f} s)")
    return 1 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
