#!/usr/bin/env python3
"""Mote's HTTP paths beside its MQTT path: publish throughput and SSE fan-out.

Every round starts a fresh `mote --memory` (per-client queues of 2,000,000 messages, as
benches/broker_bench.py) and measures, with loss counted (a throughput with losses is no
throughput: such a run is flagged):

(a) Publish, QoS 1, 64-byte payloads, one MQTT subscriber (mosquitto_sub, QoS 1, MQTT 5)
    counting what arrives. For --publish-secs seconds, --conns HTTP/1.1 keep-alive
    connections in --procs processes each POST `/api/v1/publish` (JSON), one request
    after another:
      http/httpx  one httpx.AsyncClient per connection (what a Python backend uses);
      http/raw    a minimal asyncio client writing the same request in one write (httpx
                  spends far more CPU per request than the broker does, so this one
                  shows more of the broker).
    Then as many messages through MQTT with `mqtt-load --v5 --qos 1 --size 64` and
    --conns publishers:
      mqtt/inflight=1   one message in flight per connection, like an HTTP request;
      mqtt/inflight=64  mqtt-load's default window;
      mqtt/inflight=1 @ http/raw's rate   paced to the rate http/raw reached, so the
                  broker's CPU per message compares at the same load (per-wakeup costs
                  make CPU per message fall as the rate rises).
    Reported: acknowledged msgs/s (200 answers / PUBACKs) and the ratio to mqtt
    inflight=1, delivered, lost = acked - delivered.
(b) Fan-out: --sse-clients concurrent `GET /api/v1/subscribe?filter=bench/sse&qos=1`
    streams (raw asyncio sockets in --procs processes, opened 16 at a time per process
    because of `mqtt.max_pending_per_ip`), then 1 paho MQTT 5 publisher sends
    --sse-messages QoS 1 messages at --sse-rate/s whose payload carries a sequence number
    and the send time. Reported: delivered msgs/s over all clients, lost, streams missing
    messages, duplicates, p50/p99 delivery latency (send time -> the read that returned
    the event), the broker's VmRSS idle, with the streams open, and after. Beside it, on
    another fresh broker, the same shape with MQTT subscribers (mqtt-load: 1 publisher,
    --sse-clients subscribers, QoS 1, same count and rate).

CPU per message is given for the broker (its utime+stime over the messages) and for the
clients (theirs): where the client spends more than the broker, the client set the pace.
The clients and the broker share the machine's cores.

Usage (from the repository root):
    cargo build --release -p mote-broker -p mote-load
    python3 benches/http_bench.py [--rounds 3] [--out FILE.json]
"""

import argparse
import asyncio
import datetime
import json
import multiprocessing as mp
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
MOTE_CONFIG = "[mqtt]\nmax_queued_messages = 2000000\nmax_queued_bytes = 4294967296\n"
PAYLOAD = "p" * 64
PUB_TOPIC = "bench/http"
SSE_TOPIC = "bench/sse"
SSE_CONNECT_AT_ONCE = 16  # per process; Mote refuses more than 64 pending sockets per address


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def proc_cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def children_cpu_secs():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def self_cpu_secs():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def reap(proc, timeout=10):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Mote:
    """A fresh `mote --memory` with HTTP, on ports the OS picks."""

    def __init__(self, exe, work):
        cfg = os.path.join(work, "mote.toml")
        with open(cfg, "w") as f:
            f.write(MOTE_CONFIG)
        self.log = open(os.path.join(work, "mote.log"), "w+")
        self.proc = subprocess.Popen(
            [exe, "--memory", "--config", cfg, "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0",
             "--log", "warn,mote_broker::runtime::server=info"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log)
        end = time.monotonic() + 10
        while True:
            self.log.seek(0)
            got = dict(re.findall(r"listening (http|mqtt)=(\S+)", self.log.read()))
            if len(got) == 2:
                break
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError("mote did not start: " + open(self.log.name).read()[-2000:])
            time.sleep(0.02)
        self.http, self.mqtt = got["http"], got["mqtt"]

    def cpu(self):
        return proc_cpu_secs(self.proc.pid)

    def rss_kib(self):
        return vm_rss_kib(self.proc.pid)

    def warnings(self):
        self.log.seek(0)
        return [line for line in self.log.read().splitlines() if " WARN " in line or " ERROR " in line]

    def stop(self):
        reap(self.proc)
        self.log.close()


class Counter:
    """mosquitto_sub (QoS 1, MQTT 5) printing one '.' per message; counts them."""

    def __init__(self, mqtt_addr, topic):
        host, port = mqtt_addr.rsplit(":", 1)
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", host, "-p", port, "-t", topic, "-q", "1", "-V", "mqttv5",
             "-i", f"bench-count-{os.getpid()}", "-F", "."],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.n = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while True:
            b = self.proc.stdout.read1(65536)
            if not b:
                return
            self.n += b.count(b".")

    def wait_subscribed(self, mote, topic):
        """Publishes probes to `topic` until one is delivered to someone (200, not 202);
        returns how many were (the counter will count them)."""
        import httpx
        end = time.monotonic() + 10
        while time.monotonic() < end:
            r = httpx.post(f"http://{mote.http}/api/v1/publish", timeout=5,
                           json={"topic": topic, "payload": "probe", "qos": 1})
            if r.status_code == 200:
                return 1
            time.sleep(0.05)
        raise RuntimeError("mosquitto_sub did not subscribe")

    def settle(self, expected, quiet_secs=5.0):
        """Waits until `expected` arrived or nothing arrived for `quiet_secs`."""
        last, last_change = self.n, time.monotonic()
        while self.n < expected and time.monotonic() - last_change < quiet_secs:
            time.sleep(0.05)
            if self.n != last:
                last, last_change = self.n, time.monotonic()
        return self.n

    def stop(self):
        reap(self.proc)
        self.thread.join(5)
        self.proc.stdout.close()


# ---------------------------------------------------------------------------------------
# (a) HTTP publishers, in worker processes


def publish_request(http_addr, topic):
    body = json.dumps({"topic": topic, "payload": PAYLOAD, "qos": 1}).encode()
    head = (f"POST /api/v1/publish HTTP/1.1\r\nHost: {http_addr}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def raw_publisher(http_addr, topic, stop_at, statuses):
    host, port = http_addr.rsplit(":", 1)
    req = publish_request(http_addr, topic)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        while time.time() < stop_at:
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            i = head.lower().index(b"content-length:")
            await reader.readexactly(int(head[i + 15:head.index(b"\r\n", i)]))
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def httpx_publisher(http_addr, topic, stop_at, statuses):
    import httpx
    body = json.dumps({"topic": topic, "payload": PAYLOAD, "qos": 1})
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=f"http://{http_addr}", limits=limits, timeout=30) as c:
        while time.time() < stop_at:
            r = await c.post("/api/v1/publish", content=body, headers=headers)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1


def publish_worker(kind, http_addr, topic, conns, start_at, secs, out):
    """One process: `conns` connections publishing from `start_at` for `secs` seconds."""
    if kind == "httpx":
        import httpx  # noqa: F401 (before the clock starts)

    async def main():
        statuses = {}
        fn = raw_publisher if kind == "raw" else httpx_publisher
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = self_cpu_secs()
        results = await asyncio.gather(*[fn(http_addr, topic, start_at + secs, statuses) for _ in range(conns)],
                                       return_exceptions=True)
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        out.put({"statuses": statuses, "errors": errors, "end": time.time(), "cpu": self_cpu_secs() - cpu0})
    asyncio.run(main())


def run_http_publish(ctx, kind, mote, a):
    topic = f"{PUB_TOPIC}/{kind}"  # not the topic of an earlier run's subscriber
    counter = Counter(mote.mqtt, topic)
    try:
        base = counter.wait_subscribed(mote, topic)
        out = ctx.Queue()
        start_at = time.time() + 1.0
        per = [a.conns // a.procs + (1 if i < a.conns % a.procs else 0) for i in range(a.procs)]
        procs = [ctx.Process(target=publish_worker, args=(kind, mote.http, topic, n, start_at, a.publish_secs, out))
                 for n in per if n]
        cpu0 = mote.cpu()
        for p in procs:
            p.start()
        try:
            results = [out.get(timeout=a.publish_secs + 60) for _ in procs]
        finally:
            stop_all(procs)
        secs = max(r["end"] for r in results) - start_at
        cpu = mote.cpu() - cpu0
        statuses = {}
        for r in results:
            for k, v in r["statuses"].items():
                statuses[k] = statuses.get(k, 0) + v
        acked = statuses.get(200, 0)
        delivered = counter.settle(base + acked) - base
    finally:
        counter.stop()
    problems = [e for r in results for e in r["errors"]]
    if set(statuses) - {200}:
        problems.append(f"answers other than 200: {statuses}")
    return {
        "path": f"http/{kind}", "acked": acked, "acked_per_sec": acked / secs, "delivered": delivered,
        "lost": acked - delivered, "broker_cpu_us_per_msg": cpu * 1e6 / max(acked, 1),
        "client_cpu_us_per_msg": sum(r["cpu"] for r in results) * 1e6 / max(acked, 1), "problems": problems,
    }


def mqtt_load(load_exe, mote, args):
    """Runs mqtt-load against `mote`; (its JSON report, broker CPU s, mqtt-load CPU s)."""
    cpu0, child0 = mote.cpu(), children_cpu_secs()
    out = subprocess.run([load_exe, "--broker", mote.mqtt, "--v5", "--qos", "1", "--size", "64", "--json",
                          "--timeout", "120"] + args, capture_output=True, text=True, timeout=180)
    cpu, child = mote.cpu() - cpu0, children_cpu_secs() - child0
    try:
        rep = json.loads(out.stdout)
    except ValueError:
        raise RuntimeError(f"mqtt-load {args}: {out.stderr[-1000:]}")
    rep["problems"] = rep.get("problems", []) + ([] if out.returncode == 0 else [out.stderr[-500:]])
    return rep, cpu, child


def run_mqtt_publish(load_exe, mote, a, count_total, inflight, rate=0.0):
    """`count_total` messages from a.conns publishers; `rate`: msgs/s over all of them."""
    per = max(1, round(count_total / a.conns))
    rep, cpu, client = mqtt_load(load_exe, mote, [
        "--publishers", str(a.conns), "--subscribers", "1", "--count", str(per), "--inflight", str(inflight),
        "--rate", str(rate / a.conns), "--client-prefix", f"mq{inflight}-{int(rate)}"])
    acked = rep["publish"]["acked"]
    return {
        "path": f"mqtt/inflight={inflight}" + (" @ http/raw's rate" if rate else ""), "acked": acked,
        "acked_per_sec": rep["publish"]["msgs_per_sec"],
        "delivered": rep["delivery"]["received"], "lost": rep["delivery"]["lost"],
        "broker_cpu_us_per_msg": cpu * 1e6 / max(acked, 1), "client_cpu_us_per_msg": client * 1e6 / max(acked, 1),
        "problems": rep["problems"],
    }


def run_mqtt_fanout(load_exe, mote, a):
    """(b) with MQTT subscribers: 1 publisher -> a.sse_clients subscribers, same rate."""
    rep, cpu, client = mqtt_load(load_exe, mote, [
        "--publishers", "1", "--subscribers", str(a.sse_clients), "--count", str(a.sse_messages),
        "--rate", str(a.sse_rate), "--connect-concurrency", str(SSE_CONNECT_AT_ONCE), "--client-prefix", "fan"])
    d, lat = rep["delivery"], rep["latency_us"] or {}
    return {
        "clients": a.sse_clients, "delivered": d["received"], "expected": d["expected_per_subscriber"] * a.sse_clients,
        "lost": d["lost"], "duplicates": d["duplicates"], "delivered_per_sec": d["msgs_per_sec"],
        "p50_ms": lat.get("p50", float("nan")) / 1e3, "p99_ms": lat.get("p99", float("nan")) / 1e3,
        "max_ms": lat.get("max", float("nan")) / 1e3, "broker_cpu_us_per_delivery": cpu * 1e6 / max(d["received"], 1),
        "client_cpu_us_per_delivery": client * 1e6 / max(d["received"], 1), "problems": rep["problems"],
    }


# ---------------------------------------------------------------------------------------
# (b) SSE clients, in worker processes


class SseClient:
    """One raw SSE stream; notes every message's sequence number and latency."""

    def __init__(self, m):
        self.seen = bytearray(m)
        self.unique = self.dups = self.dropped_events = 0
        self.lat_ns = []
        self.last_ns = 0  # when the last message arrived
        self.rest = b""


async def sse_open(http_addr, client, gate, opened):
    host, port = http_addr.rsplit(":", 1)
    async with gate:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write((f"GET /api/v1/subscribe?filter={SSE_TOPIC}&qos=1 HTTP/1.1\r\nHost: {http_addr}\r\n"
                      "Accept: text/event-stream\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace").splitlines()[0])
    opened.append(client)
    return reader, writer


async def sse_read(reader, client):
    """Reads until EOF or cancelled. The body is chunked; each event is one chunk, so
    the chunk-size lines are simply lines that are not `data:` lines."""
    marker = b'"payload":"'
    while True:
        b = await reader.read(65536)
        now = time.time_ns()
        if not b:
            return
        lines = (client.rest + b).split(b"\n")
        client.rest = lines.pop()
        for line in lines:
            if line.startswith(b"data: "):
                i = line.find(marker)
                if i < 0:
                    if b'"dropped"' in line:
                        client.dropped_events += 1
                    continue
                seq, sent = line[i + len(marker):line.index(b'"', i + len(marker))].split(b" ")
                seq = int(seq)
                if client.seen[seq]:
                    client.dups += 1
                else:
                    client.seen[seq] = 1
                    client.unique += 1
                client.lat_ns.append(now - int(sent))
                client.last_ns = now


def sse_worker(http_addr, n, m, ctrl, out):
    """One process: opens `n` streams, says ready, then reads until every stream has
    `m` messages or nothing arrived for `settle` seconds after the publisher finished."""
    async def main():
        gate = asyncio.Semaphore(SSE_CONNECT_AT_ONCE)
        clients, opened = [SseClient(m) for _ in range(n)], []
        t0 = time.monotonic()
        conns = await asyncio.gather(*[sse_open(http_addr, c, gate, opened) for c in clients],
                                     return_exceptions=True)
        failed = [repr(c) for c in conns if isinstance(c, BaseException)]
        ok = [(c, conn) for c, conn in zip(clients, conns) if not isinstance(conn, BaseException)]
        loop = asyncio.get_running_loop()
        cpu0 = self_cpu_secs()
        readers = [asyncio.create_task(sse_read(conn[0], c)) for c, conn in ok]
        ctrl.send({"opened": len(ok), "failed": failed[:5], "n_failed": len(failed),
                   "open_secs": time.monotonic() - t0})
        settle = await loop.run_in_executor(None, ctrl.recv)  # the publisher is done
        last, last_change = -1, time.monotonic()
        while time.monotonic() - last_change < settle:
            total = sum(c.unique for c, _ in ok)
            if total == len(ok) * m:
                break
            if total != last:
                last, last_change = total, time.monotonic()
            await asyncio.sleep(0.05)
        cpu = self_cpu_secs() - cpu0
        for r in readers:
            r.cancel()
        for _, (_, w) in ok:
            w.close()
        lat = [x for c, _ in ok for x in c.lat_ns]
        out.put({
            "opened": len(ok), "unique": [c.unique for c, _ in ok], "dups": sum(c.dups for c, _ in ok),
            "dropped_events": sum(c.dropped_events for c, _ in ok), "lat_ns": lat, "cpu": cpu,
            "last_ns": max((c.last_ns for c, _ in ok), default=0),
        })
    asyncio.run(main())


def stop_all(procs):
    """Reaps worker processes (terminating those still running: after an error)."""
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.terminate()
            p.join()


def run_sse(ctx, mote, a):
    procs = []
    try:
        return _run_sse(ctx, mote, a, procs)
    finally:
        stop_all(procs)


def _run_sse(ctx, mote, a, procs):
    import paho.mqtt.client as mqtt
    rss_idle = mote.rss_kib()
    out = ctx.Queue()
    per = [a.sse_clients // a.procs + (1 if i < a.sse_clients % a.procs else 0) for i in range(a.procs)]
    pipes = []
    for n in per:
        here, there = ctx.Pipe()
        p = ctx.Process(target=sse_worker, args=(mote.http, n, a.sse_messages, there, out))
        p.start()
        pipes.append(here)
        procs.append(p)
    ready = [pp.recv() for pp in pipes]
    opened = sum(r["opened"] for r in ready)
    time.sleep(0.5)
    rss_open = mote.rss_kib()

    host, port = mote.mqtt.rsplit(":", 1)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sse-pub", protocol=mqtt.MQTTv5)
    pub.connect(host, int(port))
    pub.loop_start()
    cpu0 = mote.cpu()
    try:
        infos = []
        start = time.monotonic()
        first_send = time.time_ns()
        for seq in range(a.sse_messages):
            time.sleep(max(0.0, start + seq / a.sse_rate - time.monotonic()))
            infos.append(pub.publish(SSE_TOPIC, f"{seq} {time.time_ns()}".encode(), qos=1))
        for i in infos:
            i.wait_for_publish(30)
        acked = sum(1 for i in infos if i.is_published())
    finally:
        pub.loop_stop()
        pub.disconnect()
    for pp in pipes:
        pp.send(a.settle)
    results = [out.get(timeout=a.settle + 120) for _ in procs]
    cpu = mote.cpu() - cpu0
    stop_all(procs)
    rss_after = mote.rss_kib()
    unique = [u for r in results for u in r["unique"]]
    lat = sorted(x for r in results for x in r["lat_ns"])
    delivered = sum(unique)
    # From the first send to the last delivery.
    secs = (max(r["last_ns"] for r in results) - first_send) / 1e9
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1e6 if lat else float("nan")
    problems = []
    n_failed = sum(r["n_failed"] for r in ready)
    if n_failed:
        problems.append(f"{n_failed} streams did not open: {ready[0]['failed'] or ready[-1]['failed']}")
    if acked != a.sse_messages:
        problems.append(f"only {acked} of {a.sse_messages} publishes acknowledged")
    return {
        "clients": opened, "messages": a.sse_messages, "rate": a.sse_rate,
        "delivered": delivered, "expected": opened * a.sse_messages,
        "lost": opened * a.sse_messages - delivered,
        "clients_incomplete": sum(1 for u in unique if u < a.sse_messages),
        "duplicates": sum(r["dups"] for r in results),
        "dropped_events": sum(r["dropped_events"] for r in results),
        "delivered_per_sec": delivered / secs if secs > 0 else 0.0,
        "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": lat[-1] / 1e6 if lat else float("nan"),
        "open_secs": max(r["open_secs"] for r in ready),
        "rss_idle_kib": rss_idle, "rss_open_kib": rss_open, "rss_after_kib": rss_after,
        "broker_cpu_us_per_delivery": cpu * 1e6 / max(delivered, 1),
        "client_cpu_us_per_delivery": sum(r["cpu"] for r in results) * 1e6 / max(delivered, 1),
        "problems": problems,
    }


# ---------------------------------------------------------------------------------------
# Report


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def span(xs, fmt):
    xs = [x for x in xs if x is not None]
    return f"{fmt(statistics.median(xs))} ({fmt(min(xs))}–{fmt(max(xs))})" if xs else "–"


def markdown(rounds, cmd, info, a):
    n = lambda x: f"{x:,.0f}"
    f1 = lambda v: f"{v:.1f}"
    ms = lambda v: f"{v:.1f} ms"
    lines = [f"Machine: {info['nproc']} vCPUs ({info['cpu']}), shared with other jobs (load average "
             f"{info['load']} at the start); {info['date']}; {info['mote']} at {info['git']}; Python "
             f"{info['python']}, httpx {info['httpx']}, paho-mqtt {info['paho']}, {info['mosquitto_sub']}, "
             f"mqtt-load {info['mqtt_load']}; {info['secs']} s in all.",
             "", f"Command: `{cmd}`", "",
             f"**(a) Publish, QoS 1, 64-byte payloads, {a.conns} connections in {a.procs} client processes, "
             f"{a.publish_secs:g} s (HTTP) or the same count (MQTT), one QoS 1 subscriber; "
             f"median (min–max) of {len(rounds)} rounds; delivered and lost summed over the rounds.**", "",
             "| path | acked msg/s | ÷ mqtt inflight=1 | delivered / acked | lost | broker CPU µs/msg | client CPU µs/msg |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    paths = [r["path"] for r in rounds[0]["publish"]]
    base = [next(p for p in r["publish"] if p["path"] == "mqtt/inflight=1") for r in rounds]
    for path in paths:
        rows = [next(p for p in r["publish"] if p["path"] == path) for r in rounds]
        ratio = [x["acked_per_sec"] / b["acked_per_sec"] for x, b in zip(rows, base)]
        lines.append(
            f"| {path} | {span([x['acked_per_sec'] for x in rows], n)} | {span(ratio, lambda v: f'{v:.3f}')} "
            f"| {sum(x['delivered'] for x in rows):,} / {sum(x['acked'] for x in rows):,} "
            f"| {sum(x['lost'] for x in rows)} | {span([x['broker_cpu_us_per_msg'] for x in rows], f1)} "
            f"| {span([x['client_cpu_us_per_msg'] for x in rows], f1)} |")
    s = [r["sse"] for r in rounds]
    m = [r["mqtt_fanout"] for r in rounds]
    lines += ["", f"**(b) Fan-out: 1 MQTT publisher (QoS 1, MQTT 5) → {s[0]['clients']:,} SSE streams "
              f"(`qos=1`, raw sockets in {a.procs} processes), and the same with {a.sse_clients:,} MQTT "
              f"subscribers (mqtt-load, QoS 1); {a.sse_messages} messages at {a.sse_rate:g}/s; "
              f"median (min–max) of {len(rounds)} rounds; counts summed over the rounds.**", "",
              "| metric | SSE | MQTT |", "|---|---:|---:|",
              f"| delivered msg/s (all clients) | {span([x['delivered_per_sec'] for x in s], n)} "
              f"| {span([x['delivered_per_sec'] for x in m], n)} |",
              f"| delivered / expected | {sum(x['delivered'] for x in s):,} / {sum(x['expected'] for x in s):,} "
              f"| {sum(x['delivered'] for x in m):,} / {sum(x['expected'] for x in m):,} |",
              f"| lost; duplicates | {sum(x['lost'] for x in s)}; {sum(x['duplicates'] for x in s)} "
              f"| {sum(x['lost'] for x in m)}; {sum(x['duplicates'] for x in m)} |",
              f"| streams missing messages; `dropped` events | {sum(x['clients_incomplete'] for x in s)}; "
              f"{sum(x['dropped_events'] for x in s)} | |",
              f"| latency p50 | {span([x['p50_ms'] for x in s], ms)} | {span([x['p50_ms'] for x in m], ms)} |",
              f"| latency p99 | {span([x['p99_ms'] for x in s], ms)} | {span([x['p99_ms'] for x in m], ms)} |",
              f"| latency max | {span([x['max_ms'] for x in s], ms)} | {span([x['max_ms'] for x in m], ms)} |",
              f"| broker CPU µs per delivery (MQTT: incl. connection setup) | {span([x['broker_cpu_us_per_delivery'] for x in s], f1)} "
              f"| {span([x['broker_cpu_us_per_delivery'] for x in m], f1)} |",
              f"| client CPU µs per delivery (incl. setup for MQTT) | {span([x['client_cpu_us_per_delivery'] for x in s], f1)} "
              f"| {span([x['client_cpu_us_per_delivery'] for x in m], f1)} |",
              f"| seconds to open the streams | {span([x['open_secs'] for x in s], f1)} | |",
              f"| broker VmRSS MiB: idle → streams open → after | "
              f"{span([x['rss_idle_kib'] / 1024 for x in s], f1)} → {span([x['rss_open_kib'] / 1024 for x in s], f1)} → "
              f"{span([x['rss_after_kib'] / 1024 for x in s], f1)} | |",
              f"| broker VmRSS per open stream | "
              f"{span([(x['rss_open_kib'] - x['rss_idle_kib']) / x['clients'] for x in s], lambda v: f'{v:.1f} KiB')} | |"]
    problems = [f"round {i + 1} {p['path']}: {q}" for i, r in enumerate(rounds) for p in r["publish"] for q in p["problems"]]
    problems += [f"round {i + 1} {k}: {q}" for i, r in enumerate(rounds) for k in ("sse", "mqtt_fanout")
                 for q in r[k]["problems"]]
    if problems:
        lines += ["", "**Problems (a run with losses is no valid throughput):**"] + [f"- {p}" for p in problems]
    return "\n".join(lines)


def machine_info(mote, load):
    import httpx
    import paho.mqtt
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    commit = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = sh(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "--", "broker", "codec"])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
        "load": open("/proc/loadavg").read().split()[0],
        "mote": sh([mote, "--version"]), "mqtt_load": sh([load, "--version"]).split()[-1],
        "mosquitto_sub": (sh(["mosquitto_sub", "--help"]).splitlines()[1:2] or [""])[0].split(" running")[0],
        "python": platform.python_version(), "httpx": httpx.__version__, "paho": paho.mqtt.__version__,
        "git": commit + (" + uncommitted changes in broker/ or codec/" if dirty else ""),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mote", default=os.path.join(ROOT, "target/release/mote"))
    ap.add_argument("--load", default=os.path.join(ROOT, "target/release/mqtt-load"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=8, help="publishing connections (HTTP and MQTT)")
    ap.add_argument("--procs", type=int, default=2, help="client processes for HTTP publishers and SSE streams")
    ap.add_argument("--publish-secs", type=float, default=8.0)
    ap.add_argument("--sse-clients", type=int, default=1000)
    ap.add_argument("--sse-messages", type=int, default=100)
    ap.add_argument("--sse-rate", type=float, default=10.0, help="messages per second")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds without progress before the rest counts as lost")
    ap.add_argument("--out", help="also write every measurement as JSON here")
    a = ap.parse_args()
    for exe in (a.mote, a.load):
        if not os.access(exe, os.X_OK):
            sys.exit(f"{exe} is missing: cargo build --release -p mote-broker -p mote-load")
    if not shutil.which("mosquitto_sub"):
        sys.exit("mosquitto_sub is missing (apt-get install mosquitto-clients)")
    cmd = "python3 benches/http_bench.py " + " ".join(sys.argv[1:])
    info = machine_info(a.mote, a.load)
    ctx = mp.get_context("spawn")
    rounds = []
    started = time.monotonic()
    for i in range(a.rounds):
        r = {"publish": []}
        with tempfile.TemporaryDirectory(prefix="http-bench-") as work:
            mote = Mote(a.mote, work)
            try:
                for kind in ("httpx", "raw"):
                    r["publish"].append(run_http_publish(ctx, kind, mote, a))
                    print(f"round {i + 1} {json.dumps(r['publish'][-1])}", file=sys.stderr)
                raw = r["publish"][-1]
                for inflight, rate in ((1, 0.0), (64, 0.0), (1, raw["acked_per_sec"])):
                    r["publish"].append(run_mqtt_publish(a.load, mote, a, raw["acked"], inflight, rate))
                    print(f"round {i + 1} {json.dumps(r['publish'][-1])}", file=sys.stderr)
                r["warnings_a"] = mote.warnings()[:20]
            finally:
                mote.stop()
        with tempfile.TemporaryDirectory(prefix="http-bench-") as work:
            mote = Mote(a.mote, work)
            try:
                r["sse"] = run_sse(ctx, mote, a)
                print(f"round {i + 1} sse {json.dumps(r['sse'])}", file=sys.stderr)
                r["warnings_b"] = mote.warnings()[:20]
            finally:
                mote.stop()
        with tempfile.TemporaryDirectory(prefix="http-bench-") as work:
            mote = Mote(a.mote, work)
            try:
                r["mqtt_fanout"] = run_mqtt_fanout(a.load, mote, a)
                print(f"round {i + 1} mqtt fan-out {json.dumps(r['mqtt_fanout'])}", file=sys.stderr)
            finally:
                mote.stop()
        rounds.append(r)
    info["secs"] = round(time.monotonic() - started)
    print(markdown(rounds, cmd, info, a))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"info": info, "args": vars(a), "rounds": rounds}, f, indent=1)


if __name__ == "__main__":
    main()
