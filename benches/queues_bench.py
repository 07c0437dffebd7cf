#!/usr/bin/env python3
"""Work queues: Mote's `$queue/NAME` beside RabbitMQ and NATS JetStream, side by side in
one invocation.

Four servers run for the whole invocation, each with a data directory of its own in a
temporary directory (removed at the end):

  mote             `mote --data-dir D` with its default durability (`--fsync always`: a
                   PUBACK comes after the job is fsynced);
  mote/fsync=never `mote --data-dir D --fsync never` (written, synced by the OS);
  rabbitmq         a private `rabbitmq-server` (the Debian package's scripts) started here
                   as a child process with its own node name, ports, epmd, Mnesia and log
                   directories and Erlang cookie (HOME); a durable classic queue and
                   persistent messages (delivery-mode 2) with publisher confirms: RabbitMQ
                   confirms a persistent message once it is fsynced, as `mote` does;
  jetstream        `nats-server -js -sd D`, a file-backed stream with WorkQueue retention
                   (acknowledged once written to the OS, synced every 2 minutes, as
                   `mote/fsync=never`).

Both Motes get `[mqtt] max_inflight = 1024` and `receive_maximum = 1024`; every Mote
queue is declared first over `$admin/queue/NAME` with `{"prefetch": 100,
"max_messages": ..., "max_bytes": ...}` (the default limit, 10,000 jobs, is too small).

Scenarios, 64-byte payloads (--size) carrying a sequence number and the send time; every
job is checked by its sequence number, so loss and duplicates are counted (a figure with
losses is flagged):

(a) enqueue: one connection enqueues --jobs (200,000) jobs keeping --window (256)
    unacknowledged. Mote: MQTT 5 QoS 1 PUBLISH to `$queue/NAME`, the PUBACK is the
    durable acknowledgement. RabbitMQ: basic.publish to the default exchange, persistent,
    on a channel in confirm mode; basic.ack (often `multiple`) is the acknowledgement.
    JetStream: PUB with a reply subject, the PubAck is the acknowledgement. msgs/s (first
    send to last acknowledgement), p50/p99 acknowledgement latency; lost = not
    acknowledged (or refused).
(b) drain, once per --workers count (1 and 8): the --jobs jobs that (a) stored (refilled,
    unmeasured, for every drain after the first of a round and when (b) is repeated) are
    consumed by W competing workers (a worker is a consumer process) that acknowledge
    every job, one by one, with a prefetch of 100 each. Mote: SUBSCRIBE QoS 1 to
    `$queue/NAME` with Receive Maximum 100 (prefetch min(100, 100)), a PUBACK per job.
    RabbitMQ: basic.qos prefetch_count 100, basic.consume, a basic.ack per job (never
    `multiple`). JetStream: one durable pull consumer (explicit ack, max_ack_pending
    100 x W) shared by the workers, each keeping at most 100 messages requested and not
    received (pulls of 50), a +ACK per message. msgs/s from the workers' start (the
    moment all are told to go: SUBSCRIBE, basic.consume, first pull) to the last job
    received; every job exactly once: lost (acknowledged by (a), never received), dups
    (received more than once, by one worker or by two), and what the server still holds
    after (RabbitMQ: messages ready; JetStream: messages in the stream; Mote: not asked).
(c) end to end, once per --workers count: W workers as in (b) on an empty queue, then one
    producer enqueues at a fixed --rate (5,000/s) for --e2e-secs (15) s with its
    acknowledgements as in (a). p50/p99/p99.9/max enqueue-to-receive latency (send time
    in the payload to receipt, one clock), the enqueue rate reached, loss and duplicates.

A summary table puts (b)'s msgs/s and (c)'s p99 side by side per worker count, with the
ratios mote / rabbitmq and mote / jetstream.

The load generator is Python: all sides use clients on raw asyncio sockets with the same
windows and batched writes, from benchclient.py (shared with streams_bench.py): MQTT 5,
the NATS text protocol and AMQP 0-9-1 written the same way (pika's BlockingConnection
waits for each publisher confirm, one in flight: about 300 persistent messages/s on this
machine; no Python client is used for RabbitMQ); nats-py only creates streams and
consumers. Python may be the bottleneck, the more so with 8 worker processes on a
2-core machine: the client's CPU per job (producer and workers) and the server's are
reported so that it shows. --rounds rounds (3), the servers in
alternating order in each scenario; medians (min-max); ratios mote / rabbitmq and mote /
jetstream of the medians. The machine may be shared: each measurement also estimates the
CPU and disk writes of other processes (as streams_bench.py does, but without the
kernel's own threads and interrupt time, which a server's fsyncs keep busy) and is
repeated (--retries, after --retry-wait s) when they pass --max-foreign or
--max-foreign-mb; a measurement still disturbed is kept and flagged (and left out of the medians when
another round is not). No round starts once one more would pass --budget seconds, and no
measurement is repeated past it. --quick: 20,000 jobs, 4 s end to end, 1 round.
--from-json FILE prints the tables of a run saved with --out (a run from before --workers
shows its 2 consumers as workers 2).

Usage (from the repository root):
    cargo build --release -p mote-broker
    python3 benches/queues_bench.py [--mote target/release/mote] [--quick] [--out FILE.json]
Needs nats-server (apt-get install nats-server), nats-py (pip install nats-py) and
rabbitmq-server (apt-get install rabbitmq-server; its system service is neither used nor
needed).
"""

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchclient as bc  # noqa: E402  (the clients, servers, consumer processes, rounds, tables)
from benchclient import (  # noqa: E402
    BODY, EMPTY_TABLE, METHOD, Amqp, Members, amqp_ack, amqp_admin, amqp_method, consumer_problems, pid_alive,
    proc_children, proc_comm, shortstr, tally)

ROOT = bc.ROOT
MOTE_CONFIG = "[mqtt]\nmax_inflight = 1024\nreceive_maximum = 1024\n"
PREFETCH = 100
SEQ = bc.SEQ
RABBIT_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


# ---------------------------------------------------------------------------------------
# Servers (Mote and nats-server from benchclient.py; RabbitMQ here)


class RabbitServer(bc.Server):
    """A private RabbitMQ node: its script as our child, the Erlang VM (beam.smp) its
    child, and an epmd of our own on a port of its own (so no system-wide epmd starts)."""

    kind = "amqp"

    def __init__(self, name, work):
        self.name, self.work = name, work
        os.makedirs(work)
        ports = set()
        while len(ports) < 3:
            ports.add(bc.free_port())
        self.port, dist, epmd = sorted(ports)
        with open(os.path.join(work, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        with open(os.path.join(work, "rabbitmq.conf"), "w") as f:
            f.write(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        open(os.path.join(work, "rabbitmq-env.conf"), "w").close()
        self.nodename = f"qbench{os.getpid()}@localhost"
        env = dict(os.environ, HOME=work, RABBITMQ_MNESIA_BASE=os.path.join(work, "mnesia"),
                   RABBITMQ_LOG_BASE=os.path.join(work, "log"), RABBITMQ_NODENAME=self.nodename,
                   RABBITMQ_NODE_PORT=str(self.port), RABBITMQ_DIST_PORT=str(dist), ERL_EPMD_PORT=str(epmd),
                   RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(work, "enabled_plugins"),
                   RABBITMQ_CONF_ENV_FILE=os.path.join(work, "rabbitmq-env.conf"),
                   RABBITMQ_CONFIG_FILE=os.path.join(work, "rabbitmq.conf"),
                   RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(work, "advanced.config"),
                   RABBITMQ_PID_FILE=os.path.join(work, "rabbit.pid"),
                   RABBITMQ_PLUGINS_EXPAND_DIR=os.path.join(work, "plugins-expand"))
        self.log = open(os.path.join(work, "rabbitmq.out"), "w+")
        self.beam = None
        self.epmd = subprocess.Popen(["epmd", "-port", str(epmd)], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)
        time.sleep(0.3)
        self.proc = subprocess.Popen([RABBIT_SERVER], env=env, cwd=work, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)
        end = time.monotonic() + 120
        while True:
            if self.beam is None:
                self.beam = next((p for p in proc_children(self.proc.pid) if proc_comm(p) == "beam.smp"), None)
            self.log.seek(0)
            if "completed with" in self.log.read() and self.beam:
                try:
                    socket.create_connection(("127.0.0.1", self.port), 1).close()
                    break
                except OSError:
                    pass
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"rabbitmq-server did not start: {self.tail()}")
            time.sleep(0.1)
        self.addr = ("127.0.0.1", self.port)

    def cpu(self):
        return bc.proc_cpu_secs(self.beam)

    def written(self):
        return bc.proc_written_bytes(self.beam)

    def stop(self):
        # The script traps TERM and stops the VM (graceful); then our epmd. By PID only.
        bc.reap(self.proc, timeout=60)
        if self.beam and pid_alive(self.beam):
            os.kill(self.beam, 9)
        bc.reap(self.epmd)
        self.log.close()

    def log_lines(self):
        path = os.path.join(self.work, "log", self.nodename + ".log")
        try:
            with open(path, errors="replace") as f:
                return f.read().splitlines()
        except OSError:
            return []

    def warnings(self):
        return [line for line in self.log_lines() if "[warning]" in line or "[error]" in line]


# ---------------------------------------------------------------------------------------
# Queue setup on each server


def mote_declare(addr, name, decl):
    """`$admin/queue/NAME` with the JSON `decl`; raises unless PUBACK 0x00."""
    async def go():
        c = await bc.Mqtt.connect(addr, f"declare-{name}")
        try:
            topic = bc.mstr(f"$admin/queue/{name}")
            body = topic + b"\x00\x01" + bc.mprops() + json.dumps(decl).encode()
            c.w.write(bc.mpacket(0x32, body))
            while True:
                first, body, _ = await c.read_one(10)
                if first >> 4 == 4:
                    code = body[2] if len(body) > 2 else 0
                    if code:
                        raise RuntimeError(f"$admin/queue/{name} {decl}: PUBACK 0x{code:02x} {bytes(body)!r}")
                    return
        finally:
            c.close()
    asyncio.run(go())


def js_workers_config(consumer, workers):
    """The durable pull consumer the workers share: explicit acks, at most PREFETCH
    unacknowledged per worker."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    return ConsumerConfig(durable_name=consumer, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT,
                          max_ack_pending=PREFETCH * workers, max_waiting=512)


def js_add_wq(addr, stream, subject, consumer=None, workers=1):
    from nats.js.api import RetentionPolicy, StorageType

    async def fn(js):
        await js.add_stream(name=stream, subjects=[subject], storage=StorageType.FILE,
                            retention=RetentionPolicy.WORK_QUEUE)
        if consumer:
            await js.add_consumer(stream, js_workers_config(consumer, workers))
    asyncio.run(bc.js_admin(addr, fn))


def js_add_workers(addr, stream, consumer, workers):
    async def fn(js):
        await js.add_consumer(stream, js_workers_config(consumer, workers))
    asyncio.run(bc.js_admin(addr, fn))


def js_messages(addr, stream):
    async def fn(js):
        return (await js.stream_info(stream)).state.messages
    return asyncio.run(bc.js_admin(addr, fn))


class Q:
    """One queue on one server: where to enqueue and how to consume, the same name on all."""

    def __init__(self, srv, name, jobs):
        self.kind, self.addr = srv.kind, srv.addr
        self.name = name.replace("-", "_")
        self.stream = self.name.upper()
        self.topic = f"$queue/{self.name}" if self.kind == "mqtt" else self.name  # where to enqueue
        self.jobs = jobs

    def create(self, with_consumer=False, workers=1):
        if self.kind == "mqtt":
            mote_declare(self.addr, self.name, {"prefetch": PREFETCH, "max_messages": max(4 * self.jobs, 10_000),
                                                "max_bytes": 1 << 30})
        elif self.kind == "nats":
            js_add_wq(self.addr, self.stream, self.name, "workers" if with_consumer else None, workers)
        else:
            asyncio.run(amqp_admin(self.addr, lambda c: c.declare_queue(self.name)))

    def add_consumer(self, workers):
        if self.kind == "nats":
            js_add_workers(self.addr, self.stream, "workers", workers)

    def left(self):
        """Jobs the server still holds (ready), where it says so cheaply."""
        try:
            if self.kind == "nats":
                return js_messages(self.addr, self.stream)
            if self.kind == "amqp":
                return asyncio.run(amqp_admin(self.addr, lambda c: c.declare_queue(self.name, passive=True)))[0]
        except Exception as e:  # noqa: BLE001 (reported as unknown)
            return f"? {e!r}"
        return None

    def drop(self):
        """Frees an emptied queue where the server can (RabbitMQ, JetStream)."""
        try:
            if self.kind == "amqp":
                asyncio.run(amqp_admin(self.addr, lambda c: c.delete_queue(self.name)))
            elif self.kind == "nats":
                async def fn(js):
                    await js.delete_stream(self.stream)
                asyncio.run(bc.js_admin(self.addr, fn))
        except Exception:  # noqa: BLE001 (best effort)
            pass


# ---------------------------------------------------------------------------------------
# Enqueueing (benchclient.produce) and the workers (benchclient.Members)


def produce(q, n, window, size, lat_ns=None, rate=None, client_id="bench-pub", timeout=180.0):
    """Enqueues n jobs (job i carries i and its send time) keeping `window` unacknowledged,
    at most `rate` per second when given. Returns counts, times and the acknowledged jobs."""
    return asyncio.run(bc.produce(q.kind, q.addr, [q.topic], n, window, size, lat_ns, rate=rate, client_id=client_id,
                                  timeout=timeout, track=True))


async def consume(q, *, name, seen, go, stop, on_chunk):
    """One worker: consumes q and acknowledges every job, one by one, until told to stop."""
    fn = {"mqtt": consume_mqtt, "amqp": consume_amqp, "nats": consume_nats}[q.kind]
    await fn(q, name, seen, go, stop, on_chunk)


async def consume_mqtt(q, name, seen, go, stop, on_chunk):
    """SUBSCRIBE QoS 1 to $queue/NAME with Receive Maximum PREFETCH, a PUBACK per job."""
    await bc.mqtt_read(q.addr, name, f"$queue/{q.name}", 1, PREFETCH, None, seen, len(seen.bits) + 1, stop,
                       on_chunk=on_chunk, idle=1e9, go=go, poll=0.05)


async def consume_amqp(q, name, seen, go, stop, on_chunk):
    c = await Amqp.connect(q.addr, prefetch=PREFETCH)
    try:
        go()
        c.w.write(amqp_method(60, 20, b"\x00\x00" + shortstr(q.name) + shortstr(name) + b"\x00" + EMPTY_TABLE))
        tag = 0
        while not stop():
            got = await c.next(0.05)
            if got is None:
                continue
            buf, frames = got
            now = bc.clock_ns()
            acks = []
            before = seen.unique
            for ftype, s, e in frames:
                if ftype == BODY:
                    seen.add(buf[s:e], now)
                    acks.append(amqp_ack(tag))
                elif ftype == METHOD:
                    cm = buf[s:s + 4]
                    if cm == b"\x00\x3c\x00\x3c":  # basic.deliver: consumer tag, delivery tag
                        tag = struct.unpack_from(">Q", buf, s + 5 + buf[s + 4])[0]
                    elif cm in (b"\x00\x0a\x00\x32", b"\x00\x14\x00\x28", b"\x00\x3c\x00\x1e"):
                        raise RuntimeError(f"AMQP close or cancel: {bytes(buf[s:e])[:200]!r}")
            if acks:
                c.w.write(b"".join(acks))
            seen.last = now
            if seen.unique != before:
                seen.last_new = now
            on_chunk(seen)
    finally:
        await c.close()


async def consume_nats(q, name, seen, go, stop, on_chunk):
    """benchclient's pull loop: at most PREFETCH requested and not received, pulls of
    PREFETCH / 2, a +ACK per message."""
    await bc.nats_pull_read(q.addr, q.stream, "workers", True, PREFETCH // 2, PREFETCH, seen, len(seen.bits) + 1,
                            stop, go, on_chunk, idle=1e9)


def workers(q, tag, n, ctx, latency, count):
    """`count` competing workers of q, one process each, connected and waiting for go()."""
    return Members(ctx, consume, [f"worker-{tag}-{i}" for i in range(count)], [(q,)] * count, n, latency=latency,
                   gated=True, ready_timeout=60)


# ---------------------------------------------------------------------------------------
# Scenarios


def run_enqueue(srv, tag, a):
    q = Q(srv, f"enq-{tag}", a.jobs)
    q.create()
    lat = []
    cpu0, self0 = srv.cpu(), bc.self_cpu_secs()
    r = produce(q, a.jobs, a.window, a.size, lat, client_id=f"enq-{tag}")
    cpu, mine = srv.cpu() - cpu0, bc.self_cpu_secs() - self0
    lat.sort()
    m = {"msgs_per_sec": r["acked"] / r["secs"], "acked": r["acked"], "lost": r["lost"], "failed": r["failed"],
         "dups": None, "p50_ms": bc.pct(lat, 0.5) / 1e6, "p99_ms": bc.pct(lat, 0.99) / 1e6,
         "server_cpu_us": cpu * 1e6 / max(r["acked"], 1), "client_cpu_us": mine * 1e6 / max(r["acked"], 1),
         "problems": r["errors"]}
    return m, (q, r["acked_bits"])


def fill(srv, tag, a):
    """Stores a.jobs jobs for (b) when (a) did not."""
    q = Q(srv, f"fill-{tag}", a.jobs)
    q.create()
    r = produce(q, a.jobs, a.window, a.size, None, client_id=f"fill-{tag}")
    if r["errors"]:
        print(f"  fill {srv.name} {tag}: {r['errors']}", file=sys.stderr)
    return q, r["acked_bits"]


def run_drain(srv, tag, a, ctx, stored, w):
    q, acked_bits = stored
    expected = sum(acked_bits)
    q.add_consumer(w)
    cons = workers(q, tag, a.jobs, ctx, False, w)
    results = []
    try:
        cpu0, self0 = srv.cpu(), bc.self_cpu_secs()
        t0 = cons.go()
        cons.wait(lambda: expected, a.settle)
    finally:
        results = cons.finish()
    cpu, mine = srv.cpu() - cpu0, bc.self_cpu_secs() - self0
    received, lost, dups, extra = tally(results, acked_bits, a.jobs)
    secs = (max(r["last"] for r in results) - t0) / 1e9
    members_cpu = sum(r["cpu"] for r in results)
    problems = consumer_problems(results)
    if extra:
        problems.append(f"{extra} jobs received that the enqueue never saw acknowledged")
    left = q.left()
    if left == 0:
        q.drop()
    return {"msgs_per_sec": received / secs if secs > 0 else 0.0, "expected": expected, "received": received,
            "lost": lost, "dups": dups, "left": left, "split": [sum(r["bits"]) for r in results],
            "server_cpu_us": cpu * 1e6 / max(received, 1),
            "client_cpu_us": (mine + members_cpu) * 1e6 / max(received, 1), "problems": problems}


def run_e2e(srv, tag, a, ctx, w):
    n = int(a.rate * a.e2e_secs)
    q = Q(srv, f"e2e-{tag}", n)
    q.create(with_consumer=True, workers=w)
    cons = workers(q, tag, n, ctx, True, w)
    results, pub = [], None
    try:
        cons.go()
        time.sleep(0.3)  # subscribed, pulls waiting, basic.consume done
        cpu0, self0 = srv.cpu(), bc.self_cpu_secs()
        t0 = time.monotonic()
        pub = produce(q, n, a.window, a.size, None, rate=a.rate, client_id=f"e2e-pub-{tag}")
        secs = time.monotonic() - t0
        cons.wait(lambda: pub["acked"], a.settle)
    finally:
        results = cons.finish()
    cpu, mine = srv.cpu() - cpu0, bc.self_cpu_secs() - self0
    received, lost, dups, extra = tally(results, pub["acked_bits"], n)
    lat = sorted(x for r in results for x in r["lat_ns"])
    members_cpu = sum(r["cpu"] for r in results)
    problems = pub["errors"] + consumer_problems(results)
    if extra:
        problems.append(f"{extra} jobs received that the enqueue never saw acknowledged")
    left = q.left()
    if left == 0:
        q.drop()
    return {"msgs_per_sec": pub["acked"] / secs, "rate": a.rate, "published": pub["acked"],
            "failed": pub["failed"], "unacked": pub["unacked"], "received": received, "lost": lost, "dups": dups,
            "left": left, "p50_ms": bc.pct(lat, 0.5) / 1e6, "p99_ms": bc.pct(lat, 0.99) / 1e6,
            "p999_ms": bc.pct(lat, 0.999) / 1e6, "max_ms": (lat[-1] / 1e6) if lat else float("nan"),
            "split": [sum(r["bits"]) for r in results],
            "server_cpu_us": cpu * 1e6 / max(received, 1),
            "client_cpu_us": (mine + members_cpu) * 1e6 / max(received, 1),
            "producer_cpu_secs": round(mine, 3), "consumers_cpu_secs": round(members_cpu, 3), "problems": problems}


# ---------------------------------------------------------------------------------------
# Report


PEERS = ("rabbitmq", "jetstream")


def scen_key(scen, w):
    """The key of scenario (b) or (c) with w workers in the results: drain-1w, e2e-8w."""
    return f"{scen}-{w}w"


def worker_counts(a):
    return [int(w) for w in str(a.workers).split(",") if w.strip()]


def markdown(res, info, a, cmd):
    n0 = lambda v: f"{v:,.0f}"
    ms = lambda v: f"{v:.2f} ms"
    f1 = lambda v: f"{v:.1f}"
    span = bc.span
    systems = res["systems"]
    rounds = len(res["rounds"])
    counts = worker_counts(a)
    out = [f"Machine: {info['nproc']} vCPUs ({info['cpu']}), load average {info['load']} at the start; "
           f"{info['date']}; {info['mote']} ({info['mote_id']}; the tree at {info['git']}); "
           f"RabbitMQ {info['rabbitmq']} on Erlang {info['erlang']}; {info['nats']}; Python {info['python']}, "
           f"nats-py {info['nats_py']} (setup only); {info['secs']} s in all.", "",
           f"Command: `{cmd}`", "",
           f"Payload {a.size} B; enqueue window {a.window}; prefetch {PREFETCH} per consumer (a worker is a "
           f"consumer process); workers {', '.join(map(str, counts))}; {rounds} round(s); "
           "median (min–max) over the rounds whose measurement no other process disturbed (\"rounds used\"); "
           "lost/dups summed over every measurement; CPU is µs per job (server: its process; client: the "
           "Python load generator's processes).", ""]
    peers = [p for p in PEERS if p in systems]

    def table(title, scen, cols, key="msgs_per_sec", ratio_label=""):
        bc.md_table(out, res, title, scen, cols, peers, key=key,
                    key_label="msgs/s" if key == "msgs_per_sec" else "e2e p99", ratio_label=ratio_label)

    lost = ("lost", lambda xs: str(sum(x["lost"] for x in xs)))
    dups = ("dups", lambda xs: str(sum(x["dups"] for x in xs)))
    left = ("left after", lambda xs: ", ".join(str(x["left"]) for x in xs) if any(x["left"] is not None for x in xs)
            else "–")
    split = ("split", lambda xs: " / ".join(f"{v:,}" for v in xs[-1]["split"]))
    scpu = ("server CPU µs/job", lambda xs: span([x["server_cpu_us"] for x in xs], f1))
    ccpu = ("client CPU µs/job", lambda xs: span([x["client_cpu_us"] for x in xs], f1))
    table(f"**(a) Enqueue with durable acknowledgements: {a.jobs:,} jobs, one connection, {a.window} in "
          "flight.**", "enqueue",
          [("ack p50", lambda xs: span([x["p50_ms"] for x in xs], ms)),
           ("ack p99", lambda xs: span([x["p99_ms"] for x in xs], ms)), lost, ("dups", lambda xs: "–"), scpu, ccpu])
    for w in counts:
        table(f"**(b) Drain of {a.jobs:,} stored jobs by {w} competing consumer{'s' if w > 1 else ''}, an ack per "
              f"job, prefetch {PREFETCH} each.**", scen_key("drain", w),
              [lost, dups, left] + ([split] if w > 1 else []) + [scpu, ccpu])
    for w in counts:
        table(f"**(c) End to end, {w} consumer{'s' if w > 1 else ''}: one producer at {a.rate:,.0f} jobs/s for "
              f"{a.e2e_secs:g} s ({int(a.rate * a.e2e_secs):,} jobs, window {a.window}), {w} consumer"
              f"{'s' if w > 1 else ''} acking (prefetch {PREFETCH} each). Ratios: mote's p99 ÷ the peer's (lower "
              "is better).**", scen_key("e2e", w),
              [("e2e p50", lambda xs: span([x["p50_ms"] for x in xs], ms)),
               ("e2e p99.9", lambda xs: span([x["p999_ms"] for x in xs], ms)),
               ("e2e max", lambda xs: span([x["max_ms"] for x in xs], ms)),
               ("enqueued/s", lambda xs: span([x["msgs_per_sec"] for x in xs], n0)), lost, dups]
              + ([split] if w > 1 else []) + [scpu, ccpu],
              key="p99_ms", ratio_label="p99 ")
    # One line per worker count and server: the two figures side by side (when both
    # scenarios ran).
    drains = {w: bc.medians(res, scen_key("drain", w)) for w in counts}
    e2es = {w: bc.medians(res, scen_key("e2e", w), "p99_ms") for w in counts}
    if any(drains.values()) and any(e2es.values()):
        out += ["**Summary: medians of (b) drain msgs/s and (c) e2e p99 per worker count (ratios as above; "
                "lost and dups over every measurement of (b) and (c)).**", "",
                "| workers | server | drain msgs/s |" + "".join(f" ÷ {p} |" for p in peers) + " e2e p99 |"
                + "".join(f" p99 ÷ {p} |" for p in peers) + " lost | dups |",
                "|---:|---|---:|" + "---:|" * len(peers) + "---:|" + "---:|" * len(peers) + "---:|---:|"]
        for w in counts:
            d, e = drains[w], e2es[w]
            for s in systems:
                if s not in d and s not in e:
                    continue
                ms_ = [r[s][k] for r in res["rounds"] for k in (scen_key("drain", w), scen_key("e2e", w))
                       if r.get(s, {}).get(k)]
                row = f"| {w} | {s} | " + (n0(d[s]) if s in d else "–") + " |"
                row += "".join(f" {d[s] / d[p]:.2f}× |" if s in d and d.get(p) else " – |" for p in peers)
                row += " " + (ms(e[s]) if s in e else "–") + " |"
                row += "".join(f" {e[s] / e[p]:.2f}× |" if s in e and e.get(p) else " – |" for p in peers)
                row += f" {sum(x['lost'] or 0 for x in ms_)} | {sum(x['dups'] or 0 for x in ms_)} |"
                out.append(row)
        out.append("")
    problems = bc.round_problems(res)
    problems += [f"{s} log: {w}" for s, ws in res.get("warnings", {}).items() for w in ws[:5]]
    ms_all = [v for r in res["rounds"] for sc in r.values() for v in sc.values()]
    if ms_all:
        fc = sorted(v["foreign_cpu"] for v in ms_all)
        fd = sorted(v["foreign_disk_mb"] for v in ms_all)
        out.append(f"Other processes during the measurements (estimates): CPU median {fc[len(fc) // 2]:.0%}, max "
                   f"{fc[-1]:.0%} of the machine (the kernel's threads and interrupts, not counted there: median "
                   f"{statistics.median(v.get('kernel_cpu', 0) for v in ms_all):.0%}); disk writes median "
                   f"{fd[len(fd) // 2]:.0f} MB, max {fd[-1]:.0f} MB; "
                   f"{sum(v['attempts'] - 1 for v in ms_all)} measurement(s) repeated for that, "
                   f"{sum(1 for v in ms_all if v['busy'])} still busy after the repetitions (kept, flagged).")
        out.append("")
    problems += bc.busy_problems(res)
    problems += res.get("notes", [])
    if res.get("cut"):
        problems.append(res["cut"])
    if problems:
        out += ["**Problems and notes (a figure with losses is not a throughput):**", ""] + [f"- {p}" for p in problems]
    return "\n".join(out)


def machine_info(a):
    info = bc.machine_info(a)
    info["rabbitmq"] = bc.sh(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"]) or "?"
    info["erlang"] = bc.sh(["dpkg-query", "-W", "-f", "${Version}", "erlang-base"]) or "?"
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mote", default=os.environ.get("MOTE_BIN", os.path.join(ROOT, "target/release/mote")),
                    help="the broker (default: $MOTE_BIN, else target/release/mote)")
    ap.add_argument("--nats-server", default=shutil.which("nats-server") or "nats-server")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=200_000, help="jobs enqueued in (a) and drained in (b)")
    ap.add_argument("--rate", type=float, default=5000, help="jobs per second in (c)")
    ap.add_argument("--e2e-secs", type=float, default=15, help="seconds of (c)")
    ap.add_argument("--size", type=int, default=64, help="payload bytes (at least 16)")
    ap.add_argument("--window", type=int, default=256, help="enqueues in flight")
    ap.add_argument("--workers", default="1,8",
                    help="worker counts, comma-separated: (b) and (c) run once per count (a worker is a consumer "
                         "process, prefetch 100 each)")
    ap.add_argument("--max-foreign", type=float, default=0.10,
                    help="a measurement during which other processes used more of the CPU is repeated")
    ap.add_argument("--max-foreign-mb", type=float, default=64,
                    help="... or wrote more megabytes to disk (estimated; only with 3 %% of foreign CPU)")
    ap.add_argument("--retries", type=int, default=2, help="repetitions of a measurement on a busy machine")
    ap.add_argument("--retry-wait", type=float, default=5.0, help="seconds before repeating one")
    ap.add_argument("--budget", type=float, default=1500,
                    help="seconds: no new round once one more would pass it, no repetition past it")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds without progress before the rest counts as lost")
    ap.add_argument("--only", default="mote,mote/fsync=never,rabbitmq,jetstream", help="servers, comma-separated")
    ap.add_argument("--scenarios", default="enqueue,drain,e2e")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 20,000 jobs, 4 s end to end, 1 round")
    ap.add_argument("--out", help="also write every measurement as JSON here")
    ap.add_argument("--from-json", help="print the tables of a run saved with --out, and exit")
    a = ap.parse_args()
    if a.from_json:
        with open(a.from_json) as f:
            saved = json.load(f)
        if "workers" not in saved["args"]:  # a run from before --workers: 2 consumers
            saved["args"]["workers"] = "2"
            for r in saved["results"]["rounds"]:
                for sc in r.values():
                    for k in ("drain", "e2e"):
                        if k in sc:
                            sc[scen_key(k, 2)] = sc.pop(k)
        print(markdown(saved["results"], saved["info"], argparse.Namespace(**saved["args"]), saved["cmd"]))
        return
    if a.quick:
        a.jobs, a.e2e_secs, a.rounds = 20_000, 4, 1
    a.size = max(a.size, SEQ.size)
    only = a.only.split(",")
    try:
        counts = worker_counts(a)
    except ValueError:
        sys.exit(f"--workers {a.workers}: worker counts, comma-separated (e.g. 1,8)")
    if not counts or min(counts) < 1:
        sys.exit(f"--workers {a.workers}: at least one count, each at least 1")
    # (b) and (c) run once per worker count: drain-1w, drain-8w, e2e-1w, e2e-8w.
    scenarios = []
    for scen in a.scenarios.split(","):
        if scen in ("drain", "e2e"):
            scenarios += [scen_key(scen, w) for w in counts]
        elif scen == "enqueue":
            scenarios.append(scen)
        else:
            sys.exit(f"unknown scenario {scen}")
    if any(s.startswith("mote") for s in only) and not os.access(a.mote, os.X_OK):
        sys.exit(f"{a.mote} is missing: cargo build --release -p mote-broker (or --mote / MOTE_BIN)")
    if "jetstream" in only and not shutil.which(a.nats_server):
        sys.exit("nats-server is missing: apt-get install nats-server")
    cmd = "python3 benches/queues_bench.py " + " ".join(sys.argv[1:])
    info = machine_info(a)
    ctx = mp.get_context("spawn")
    started = time.monotonic()
    res = {"systems": [], "rounds": [], "warnings": {}, "notes": []}
    servers = {}
    work = tempfile.mkdtemp(prefix="queues-bench-")
    try:
        if any(s.startswith("mote") for s in only):
            # Run a private copy: a rebuild of the original during the run changes nothing.
            mote = os.path.join(work, "mote-binary")
            shutil.copy2(a.mote, mote)
        for s in only:
            d = os.path.join(work, s.replace("/", "_"))
            try:
                if s == "mote":
                    servers[s] = bc.MoteServer(s, mote, d, config=MOTE_CONFIG)
                elif s.startswith("mote/fsync="):
                    servers[s] = bc.MoteServer(s, mote, d, s.split("=", 1)[1], config=MOTE_CONFIG)
                elif s == "jetstream":
                    servers[s] = bc.NatsServer(s, a.nats_server, d)
                elif s == "rabbitmq":
                    if not os.access(RABBIT_SERVER, os.X_OK):
                        raise RuntimeError("rabbitmq-server is missing: apt-get install rabbitmq-server")
                    t = time.monotonic()
                    servers[s] = RabbitServer(s, d)
                    print(f"rabbitmq started in {time.monotonic() - t:.1f} s", file=sys.stderr)
                else:
                    sys.exit(f"unknown server {s}")
            except RuntimeError as e:
                if s in ("rabbitmq", "jetstream"):
                    res["notes"].append(f"{s} not run: {e}")
                    print(f"{s} not run: {e}", file=sys.stderr)
                    continue
                raise
        only = [s for s in only if s in servers]
        res["systems"] = only
        if "amqp" in [srv.kind for srv in servers.values()]:
            r = servers["rabbitmq"]
            c = asyncio.run(Amqp.connect(r.addr))
            info["rabbitmq_server"] = c.server_version()
            asyncio.run(c.close())
        setup_secs = time.monotonic() - started
        stored = {}  # server -> (queue, acknowledged jobs) that (a) or a fill left for (b)

        def prepare(scen, s, srv, tag, attempt):
            if scen.startswith("drain-") and (attempt or s not in stored):
                stored[s] = fill(srv, f"d{tag}-{scen}", a)  # not measured

        def measure(scen, s, srv, tag):
            if scen == "enqueue":
                m, stored[s] = run_enqueue(srv, tag, a)
                return m
            kind, w = scen.split("-")
            if kind == "drain":
                return run_drain(srv, f"{tag}-{w}", a, ctx, stored.pop(s), int(w[:-1]))
            return run_e2e(srv, f"{tag}-{w}", a, ctx, int(w[:-1]))
        bc.run_rounds(a, servers, scenarios, started, setup_secs, measure, res,
                      noise=lambda srvs: bc.Foreign(srvs, without_kernel=True), prepare=prepare, busy_in_log=True,
                      retries_within_budget=True)
        for s, srv in servers.items():
            res["warnings"][s] = srv.warnings()[:20]
    finally:
        for srv in servers.values():
            srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    info["secs"] = round(time.monotonic() - started)
    print(markdown(res, info, a, cmd))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"info": info, "args": vars(a), "cmd": cmd, "results": res}, f, indent=1)


if __name__ == "__main__":
    main()
