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
(b) drain: the --jobs jobs that (a) stored (refilled, unmeasured, when (a) did not run or
    (b) is repeated) are consumed by 2 competing consumers (2 processes) that acknowledge
    every job, one by one, with a prefetch of 100 each. Mote: SUBSCRIBE QoS 1 to
    `$queue/NAME` with Receive Maximum 100 (prefetch min(100, 100)), a PUBACK per job.
    RabbitMQ: basic.qos prefetch_count 100, basic.consume, a basic.ack per job (never
    `multiple`). JetStream: one durable pull consumer (explicit ack, max_ack_pending 200)
    shared by both workers, each keeping at most 100 messages requested and not received
    (pulls of 50), a +ACK per message. msgs/s from the consumers' start (the moment both
    are told to go: SUBSCRIBE, basic.consume, first pull) to the last job received;
    every job exactly once: lost (acknowledged by (a), never received), dups (received
    more than once, by one consumer or by both), and what the server still holds after
    (RabbitMQ: messages ready; JetStream: messages in the stream; Mote: not asked).
(c) end to end: 2 consumers as in (b) on an empty queue, then one producer enqueues at a
    fixed --rate (5,000/s) for --e2e-secs (15) s with its acknowledgements as in (a).
    p50/p99/p99.9/max enqueue-to-receive latency (send time in the payload to receipt, one
    clock), loss and duplicates.

The load generator is Python: all sides use clients written here on raw asyncio sockets
with the same windows and batched writes: MQTT 5 and the NATS text protocol come from
streams_bench.py (imported), AMQP 0-9-1 is written below the same way (pika's
BlockingConnection waits for each publisher confirm, one in flight: about 300 persistent
messages/s on this machine; no Python client is used for RabbitMQ); nats-py only creates
streams and consumers. Python may be the bottleneck: the client's and the server's CPU
per message are reported so that it shows. --rounds rounds (3), the servers in
alternating order in each scenario; medians (min-max); ratios mote / rabbitmq and mote /
jetstream of the medians. The machine may be shared: each measurement also estimates the
CPU and disk writes of other processes (as streams_bench.py does, but without the
kernel's own threads and interrupt time, which a server's fsyncs keep busy) and is
repeated (--retries, after --retry-wait s) when they pass --max-foreign or
--max-foreign-mb; a measurement still disturbed is kept and flagged (and left out of the medians when
another round is not). No round starts once one more would pass --budget seconds, and no
measurement is repeated past it. --quick: 20,000 jobs, 4 s end to end, 1 round.

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
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import streams_bench as sb  # noqa: E402  (the MQTT 5 and NATS clients, servers, noise estimate)

ROOT = sb.ROOT
sb.MOTE_CONFIG = "[mqtt]\nmax_inflight = 1024\nreceive_maximum = 1024\n"
PREFETCH = 100
SEQ = sb.SEQ
RABBIT_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


# ---------------------------------------------------------------------------------------
# Servers (Mote and nats-server from streams_bench.py; RabbitMQ here)


def proc_children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def proc_comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return proc_comm(pid) != ""


class RabbitServer(sb.Server):
    """A private RabbitMQ node: its script as our child, the Erlang VM (beam.smp) its
    child, and an epmd of our own on a port of its own (so no system-wide epmd starts)."""

    kind = "amqp"

    def __init__(self, name, work):
        self.name, self.work = name, work
        os.makedirs(work)
        ports = set()
        while len(ports) < 3:
            ports.add(sb.free_port())
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
        return sb.proc_cpu_secs(self.beam)

    def written(self):
        return sb.proc_written_bytes(self.beam)

    def stop(self):
        # The script traps TERM and stops the VM (graceful); then our epmd. By PID only.
        sb.reap(self.proc, timeout=60)
        if self.beam and pid_alive(self.beam):
            os.kill(self.beam, 9)
        sb.reap(self.epmd)
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


def written(srv):
    return srv.written() if hasattr(srv, "written") else sb.proc_written_bytes(srv.proc.pid)


def kernel_cpu_secs():
    """CPU seconds since boot of the kernel's own threads (children of kthreadd: journal
    commits, writeback, block I/O completion) plus interrupt and softirq time: work done
    for whoever syncs or sends, not by another user's program."""
    total = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == "2":
            total += int(fields[11]) + int(fields[12])
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (total + v[5] + v[6]) / sb.CLK_TCK


class Foreign(sb.Foreign):
    """streams_bench's estimate of what other processes did, with RabbitMQ's disk writes
    taken from its VM rather than its start script, and the kernel's own threads and
    interrupts left out of the "other" CPU (RabbitMQ's many fsyncs alone keep them busy
    for a few % of the machine, and write ~100 MB of file-system journal that its VM's
    write_bytes do not show)."""

    def __init__(self, servers):
        self.servers = servers
        os.sync()
        self.busy0, self.total0 = sb.machine_cpu_secs()
        self.cpu0 = sum(s.cpu() for s in servers)
        self.disk0 = sb.disk_written_bytes()
        self.w0 = sum(written(s) for s in servers)
        self.mine0 = sb.self_and_children_cpu_secs()
        self.kernel0 = kernel_cpu_secs()

    def stop(self):
        busy, total = sb.machine_cpu_secs()
        cpu = sum(s.cpu() for s in self.servers) - self.cpu0
        kernel = kernel_cpu_secs() - self.kernel0
        other = (busy - self.busy0) - cpu - (sb.self_and_children_cpu_secs() - self.mine0) - kernel
        mine = sum(written(s) for s in self.servers) - self.w0
        disk = (sb.disk_written_bytes() - self.disk0) - mine
        span = max(total - self.total0, 1e-9)
        return {"foreign_cpu": round(max(other, 0.0) / span, 4), "kernel_cpu": round(kernel / span, 4),
                "foreign_disk_mb": round(max(disk, 0) / 1e6, 1)}


# ---------------------------------------------------------------------------------------
# A lean AMQP 0-9-1 client on asyncio streams (only what the scenarios use)

FRAME = struct.Struct(">BHI")
METHOD, HEADER, BODY = 1, 2, 3
FRAME_END = b"\xce"


def shortstr(s):
    s = s.encode() if isinstance(s, str) else s
    return bytes([len(s)]) + s


def amqp_frame(ftype, channel, payload):
    return FRAME.pack(ftype, channel, len(payload)) + payload + FRAME_END


def amqp_method(cls_id, meth_id, args=b"", channel=1):
    return amqp_frame(METHOD, channel, struct.pack(">HH", cls_id, meth_id) + args)


def amqp_ack(tag, multiple=False):
    return amqp_method(60, 80, struct.pack(">QB", tag, 1 if multiple else 0))


EMPTY_TABLE = b"\x00\x00\x00\x00"


class Amqp:
    """One AMQP 0-9-1 connection with channel 1 open. next() returns the complete frames
    read so far as (buffer, [(type, payload start, payload end), ...])."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer
        self.buf = b""
        self.server_props = b""

    @classmethod
    async def connect(cls, addr, confirm=False, prefetch=None, user="guest", password="guest"):
        reader, writer = await asyncio.open_connection(*addr, limit=1 << 20)
        writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = cls(reader, writer)
        writer.write(b"AMQP\x00\x00\x09\x01")
        args = await c.expect(10, 10, channel=0)  # Connection.Start
        c.server_props = args
        props = shortstr("product") + b"S" + struct.pack(">I", 12) + b"queues_bench"
        writer.write(amqp_method(10, 11, struct.pack(">I", len(props)) + props + shortstr("PLAIN")
                                 + struct.pack(">I", len(user) + len(password) + 2)
                                 + b"\x00" + user.encode() + b"\x00" + password.encode() + shortstr("en_US"), 0))
        args = await c.expect(10, 30, channel=0)  # Connection.Tune
        channel_max, frame_max, _ = struct.unpack_from(">HIH", args)
        writer.write(amqp_method(10, 31, struct.pack(">HIH", channel_max, frame_max, 0), 0))
        writer.write(amqp_method(10, 40, shortstr("/") + shortstr("") + b"\x00", 0))
        await c.expect(10, 41, channel=0)
        writer.write(amqp_method(20, 10, shortstr("")))
        await c.expect(20, 11)
        if confirm:
            writer.write(amqp_method(85, 10, b"\x00"))
            await c.expect(85, 11)
        if prefetch:
            writer.write(amqp_method(60, 10, struct.pack(">IHB", 0, prefetch, 0)))
            await c.expect(60, 11)
        return c

    def server_version(self):
        m = re.search(rb"\x07versionS....([0-9.]+)", self.server_props, re.S)
        return m.group(1).decode() if m else "?"

    async def next(self, timeout=None):
        while True:
            buf = self.buf
            n, i, out = len(buf), 0, []
            while n - i >= 7:
                ftype, _, size = FRAME.unpack_from(buf, i)
                if i + 8 + size > n:
                    break
                out.append((ftype, i + 7, i + 7 + size))
                i += 8 + size
            if out:
                self.buf = buf[i:]
                return buf, out
            try:
                data = await asyncio.wait_for(self.r.read(1 << 18), timeout)
            except asyncio.TimeoutError:
                return None
            if not data:
                raise ConnectionError("connection closed")
            self.buf += data

    async def expect(self, cls_id, meth_id, channel=1, timeout=30):
        """The arguments of the next method (cls_id, meth_id); raises on a Close."""
        end = time.monotonic() + timeout
        while True:
            got = await self.next(max(0.01, end - time.monotonic()))
            if got is None:
                raise TimeoutError(f"no AMQP method {cls_id}.{meth_id}")
            buf, frames = got
            for k, (ftype, s, e) in enumerate(frames):
                if ftype != METHOD:
                    continue
                c, m = struct.unpack_from(">HH", buf, s)
                if (c, m) in ((10, 50), (20, 40)):
                    code = struct.unpack_from(">H", buf, s + 4)[0]
                    text = bytes(buf[s + 7:s + 7 + buf[s + 6]]).decode(errors="replace")
                    raise RuntimeError(f"AMQP close {code}: {text}")
                if (c, m) == (cls_id, meth_id):
                    # Put back the frames after this one.
                    rest = frames[k + 1:]
                    if rest:
                        self.buf = bytes(buf[rest[0][1] - 7:rest[-1][2] + 1]) + self.buf
                    return bytes(buf[s + 4:e])

    async def declare_queue(self, name, passive=False):
        """(message count, consumer count) of a durable queue, declared if not passive."""
        self.w.write(amqp_method(50, 10, b"\x00\x00" + shortstr(name) + bytes([1 if passive else 2]) + EMPTY_TABLE))
        args = await self.expect(50, 11)
        i = 1 + args[0]
        return struct.unpack_from(">II", args, i)

    async def delete_queue(self, name):
        self.w.write(amqp_method(50, 40, b"\x00\x00" + shortstr(name) + b"\x00"))
        await self.expect(50, 41)

    async def close(self):
        try:
            self.w.write(amqp_method(10, 50, struct.pack(">H", 200) + shortstr("bye") + b"\x00\x00\x00\x00", 0))
            await self.expect(10, 51, channel=0, timeout=3)
        except Exception:  # noqa: BLE001 (closing anyway)
            pass
        try:
            self.w.close()
        except (OSError, RuntimeError):
            pass


def amqp_publish_prefix(queue, size):
    """The frames of a persistent basic.publish of a `size`-byte body to `queue`, up to the
    body (then the body and FRAME_END)."""
    method = amqp_method(60, 40, b"\x00\x00" + shortstr("") + shortstr(queue) + b"\x00")
    header = amqp_frame(HEADER, 1, struct.pack(">HHQHB", 60, 0, size, 0x1000, 2))
    return method + header + FRAME.pack(BODY, 1, size)


async def amqp_admin(addr, fn):
    c = await Amqp.connect(addr)
    try:
        return await fn(c)
    finally:
        await c.close()


# ---------------------------------------------------------------------------------------
# Queue setup on each server


def mote_declare(addr, name, decl):
    """`$admin/queue/NAME` with the JSON `decl`; raises unless PUBACK 0x00."""
    async def go():
        c = await sb.Mqtt.connect(addr, f"declare-{name}")
        try:
            topic = sb.mstr(f"$admin/queue/{name}")
            body = topic + b"\x00\x01" + sb.mprops() + json.dumps(decl).encode()
            c.w.write(sb.mpacket(0x32, body))
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


def js_add_wq(addr, stream, subject, consumer=None):
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType

    async def fn(js):
        await js.add_stream(name=stream, subjects=[subject], storage=StorageType.FILE,
                            retention=RetentionPolicy.WORK_QUEUE)
        if consumer:
            await js.add_consumer(stream, ConsumerConfig(
                durable_name=consumer, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT,
                max_ack_pending=2 * PREFETCH, max_waiting=512))
    asyncio.run(sb.js_admin(addr, fn))


def js_add_workers(addr, stream, consumer):
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    async def fn(js):
        await js.add_consumer(stream, ConsumerConfig(
            durable_name=consumer, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT,
            max_ack_pending=2 * PREFETCH, max_waiting=512))
    asyncio.run(sb.js_admin(addr, fn))


def js_messages(addr, stream):
    async def fn(js):
        return (await js.stream_info(stream)).state.messages
    return asyncio.run(sb.js_admin(addr, fn))


class Q:
    """One queue on one server: where to enqueue and how to consume, the same name on all."""

    def __init__(self, srv, name, jobs):
        self.kind, self.addr = srv.kind, srv.addr
        self.name = name.replace("-", "_")
        self.stream = self.name.upper()
        self.jobs = jobs

    def create(self, with_consumer=False):
        if self.kind == "mqtt":
            mote_declare(self.addr, self.name, {"prefetch": PREFETCH, "max_messages": max(4 * self.jobs, 10_000),
                                                "max_bytes": 1 << 30})
        elif self.kind == "nats":
            js_add_wq(self.addr, self.stream, self.name, "workers" if with_consumer else None)
        else:
            asyncio.run(amqp_admin(self.addr, lambda c: c.declare_queue(self.name)))

    def add_consumer(self):
        if self.kind == "nats":
            js_add_workers(self.addr, self.stream, "workers")

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
                asyncio.run(sb.js_admin(self.addr, fn))
        except Exception:  # noqa: BLE001 (best effort)
            pass


# ---------------------------------------------------------------------------------------
# Enqueueing with a window, optionally at a fixed rate (scenarios a and c, the fills of b)


async def produce(q, n, window, size, lat_ns=None, rate=None, client_id="bench-pub", timeout=180.0):
    """Enqueues n jobs (job i carries i and its send time) keeping `window` unacknowledged,
    at most `rate` per second when given. Returns counts, times and the acknowledged jobs."""
    kind = q.kind
    pad = b"p" * (size - SEQ.size)
    sent_ns = [0] * n
    acked_bits = bytearray(n)
    st = {"acked": 0, "failed": 0, "errors": []}
    if kind == "mqtt":
        c = await sb.Mqtt.connect(q.addr, client_id)
        window = min(window, c.server_receive_max)
        prefix = sb.mqtt_publish_packet_prefix(f"$queue/{q.name}", size)
        pid_seq = [0] * 65536
    elif kind == "nats":
        c = await sb.Nats.connect(q.addr)
        inbox = b"_INBOX." + os.urandom(8).hex().encode()
        c.w.write(b"SUB " + inbox + b".* 1\r\n")
        head = b"PUB " + q.name.encode() + b" " + inbox + b"."
        tail = b" %d\r\n" % size
    else:
        c = await Amqp.connect(q.addr, confirm=True)
        prefix = amqp_publish_prefix(q.name, size)
        low = 0  # every job below it is settled (AMQP confirms may be `multiple`)
    inflight = 0
    progress = asyncio.Event()
    done = asyncio.get_running_loop().create_future()

    def settle(seq, ok, now, why=None):
        nonlocal inflight
        if ok:
            st["acked"] += 1
            acked_bits[seq] = 1
        else:
            st["failed"] += 1
            if why and len(st["errors"]) < 3:
                st["errors"].append(why)
        if lat_ns is not None:
            lat_ns.append(now - sent_ns[seq])
        inflight -= 1

    async def read_acks():
        nonlocal low
        settled = bytearray(n) if kind == "amqp" else None
        try:
            while st["acked"] + st["failed"] < n:
                if kind == "mqtt":
                    buf, packets = await c.next()
                    now = time.perf_counter_ns()
                    for first, s, e in packets:
                        if first != 0x40:
                            if first == 0xE0:
                                st["errors"].append(f"DISCONNECT 0x{buf[s] if e > s else 0:02x}")
                            continue
                        seq = pid_seq[(buf[s] << 8) | buf[s + 1]]
                        code = buf[s + 2] if e - s > 2 else 0
                        settle(seq, code < 0x80, now, f"PUBACK 0x{code:02x}")
                elif kind == "nats":
                    msgs = await c.next()
                    now = time.perf_counter_ns()
                    for subject, _, _, headers, payload in msgs:
                        seq = int(subject.rsplit(b".", 1)[1])
                        bad = headers is not None or b'"error"' in payload
                        settle(seq, not bad, now, ((headers or b"") + payload).decode(errors="replace")[:200])
                else:
                    buf, frames = await c.next()
                    now = time.perf_counter_ns()
                    for ftype, s, e in frames:
                        if ftype != METHOD:
                            continue
                        cm = buf[s:s + 4]
                        if cm in (b"\x00\x3c\x00\x50", b"\x00\x3c\x00\x78"):  # basic.ack / basic.nack
                            tag, bits = struct.unpack_from(">QB", buf, s + 4)
                            ok = cm[3] == 0x50
                            top = tag - 1  # delivery tags count the channel's publishes from 1
                            if bits & 1:
                                for seq in range(low, top + 1):
                                    if not settled[seq]:
                                        settled[seq] = 1
                                        settle(seq, ok, now, "basic.nack")
                            elif not settled[top]:
                                settled[top] = 1
                                settle(top, ok, now, "basic.nack")
                            while low < n and settled[low]:
                                low += 1
                        elif cm in (b"\x00\x0a\x00\x32", b"\x00\x14\x00\x28"):
                            raise RuntimeError(f"AMQP close: {bytes(buf[s:e])[:200]!r}")
                        elif cm == b"\x00\x0a\x00\x3c":
                            st["errors"].append("connection.blocked (a resource alarm)")
                progress.set()
        except Exception as e:  # noqa: BLE001 (reported)
            st["errors"].append(repr(e))
        finally:
            if not done.done():
                done.set_result(None)
            progress.set()

    reader = asyncio.create_task(read_acks())
    t0 = time.perf_counter_ns()
    wall0 = time.time_ns() - t0
    seq, pid = 0, 0
    deadline = time.monotonic() + timeout
    try:
        while seq < n and not done.done():
            room = window - inflight
            if room <= 0:
                progress.clear()
                try:
                    await asyncio.wait_for(progress.wait(), max(0.1, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
                continue
            k = min(room, n - seq)
            now = time.perf_counter_ns()
            if rate:
                due = int((now - t0) * rate / 1e9) + 1  # jobs due by now
                if due <= seq:
                    await asyncio.sleep(max(0.0002, (seq + 1) / rate - (now - t0) / 1e9))
                    continue
                k = min(k, due - seq)
            wall = wall0 + now
            parts = []
            if kind == "mqtt":
                for s in range(seq, seq + k):
                    pid = pid % 65535 + 1
                    pid_seq[pid] = s
                    sent_ns[s] = now
                    parts.append(prefix + pid.to_bytes(2, "big") + b"\x00" + SEQ.pack(s, wall) + pad)
            elif kind == "nats":
                for s in range(seq, seq + k):
                    sent_ns[s] = now
                    parts.append(head + b"%d" % s + tail + SEQ.pack(s, wall) + pad + b"\r\n")
            else:
                for s in range(seq, seq + k):
                    sent_ns[s] = now
                    parts.append(prefix + SEQ.pack(s, wall) + pad + FRAME_END)
            c.w.write(b"".join(parts))
            inflight += k
            seq += k
            await c.w.drain()
        try:
            await asyncio.wait_for(asyncio.shield(done), max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            st["errors"].append(f"timed out with {inflight} unacknowledged")
        t1 = time.perf_counter_ns()
    finally:
        reader.cancel()
        if kind == "amqp":
            await c.close()
        else:
            c.close()
    return {"sent": seq, "acked": st["acked"], "failed": st["failed"], "unacked": seq - st["acked"] - st["failed"],
            "lost": n - st["acked"], "secs": (t1 - t0) / 1e9, "errors": st["errors"], "acked_bits": acked_bits}


# ---------------------------------------------------------------------------------------
# Consumers: one process each (scenarios b and c)


class Seen(sb.Seen):
    def __init__(self, n, latency=False):
        super().__init__(n, latency)
        self.last_new = 0  # wall time of the last chunk that brought a job not seen before


async def consume_mqtt(q, name, seen, go, stop, on_chunk):
    c = await sb.Mqtt.connect(q.addr, name, receive_max=PREFETCH)
    try:
        go()
        await c.subscribe(f"$queue/{q.name}", 1)
        while not stop():
            got = await c.next(0.05)
            if got is None:
                continue
            buf, packets = got
            now = time.time_ns()
            acks = []
            before = seen.unique
            for first, s, e in packets:
                if first >> 4 != 3:
                    if first == 0xE0:
                        raise RuntimeError(f"DISCONNECT 0x{buf[s] if e > s else 0:02x}")
                    continue
                i = s + 2 + ((buf[s] << 8) | buf[s + 1])  # after the topic
                if first & 0x06:
                    acks.append(b"\x40\x02" + buf[i:i + 2])
                    i += 2
                pl, i = sb.read_varint(buf, i)  # properties (mote-id, mote-delivery-count): skipped
                seen.add(buf[i + pl:e], now)
            if acks:
                c.w.write(b"".join(acks))
            seen.last = now
            if seen.unique != before:
                seen.last_new = now
            on_chunk(seen)
    finally:
        c.close()


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
            now = time.time_ns()
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
    """streams_bench's pull loop: at most PREFETCH requested and not received, pulls of
    PREFETCH / 2, a +ACK per message."""
    def chunk(s):
        s.last_new = s.last
        on_chunk(s)
    await sb.nats_pull_read(q.addr, q.stream, "workers", True, PREFETCH // 2, PREFETCH, seen, len(seen.bits) + 1,
                            stop, go, chunk, idle=1e9)


def member_main(q, name, n, ready_q, go_ev, stop_ev, count, out_q, latency):
    """One consumer in a process of its own: connects, says ready, waits for go, consumes
    and acknowledges until told to stop."""
    seen = Seen(n, latency)
    cpu0 = sb.self_cpu_secs()
    error = None

    def go():
        ready_q.put(name)
        go_ev.wait()

    def on_chunk(s):
        count.value = s.unique + s.dups
    try:
        fn = {"mqtt": consume_mqtt, "amqp": consume_amqp, "nats": consume_nats}[q.kind]
        asyncio.run(fn(q, name, seen, go, stop_ev.is_set, on_chunk))
    except Exception as e:  # noqa: BLE001 (reported)
        error = repr(e)
        ready_q.put(name)
    out_q.put({"name": name, "bits": bytes(seen.bits), "dups": seen.dups, "foreign": seen.foreign,
               "sample": seen.sample, "lat_ns": seen.lat_ns, "last": seen.last_new or seen.last,
               "cpu": sb.self_cpu_secs() - cpu0, "error": error})


class Consumers:
    """Two competing consumers of one queue."""

    def __init__(self, q, tag, n, ctx, latency):
        self.ready_q, self.out_q, self.go_ev, self.stop_ev = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
        self.counts = [ctx.Value("q", 0, lock=False) for _ in range(2)]
        self.procs = [ctx.Process(target=member_main, args=(q, f"worker-{tag}-{i}", n, self.ready_q, self.go_ev,
                                                            self.stop_ev, self.counts[i], self.out_q, latency))
                      for i in range(2)]
        for p in self.procs:
            p.start()
        for _ in self.procs:
            self.ready_q.get(timeout=60)

    def go(self):
        t0 = time.time_ns()
        self.go_ev.set()
        return t0

    def wait(self, expected, settle, until=None):
        """Until the consumers have `expected` deliveries, or none came for `settle` s."""
        last, last_change = -1, time.monotonic()
        while any(p.is_alive() for p in self.procs):
            total = sum(c.value for c in self.counts)
            if total >= expected() and (until is None or until()):
                break
            if total != last:
                last, last_change = total, time.monotonic()
            elif time.monotonic() - last_change > settle and (until is None or until()):
                break
            time.sleep(0.01)

    def finish(self, grace=0.3):
        """Stops them (after `grace` s, to see late duplicates) and returns their results."""
        time.sleep(grace)
        self.stop_ev.set()
        self.go_ev.set()
        try:
            return [self.out_q.get(timeout=30) for _ in self.procs]
        finally:
            for p in self.procs:
                p.join(10)
                if p.is_alive():
                    p.terminate()
                    p.join()


def tally(results, acked_bits, n):
    """Exactly once: (received, lost, dups, extra) over both consumers."""
    union = bytearray(n)
    dups = sum(r["dups"] for r in results)
    for r in results:
        b = r["bits"]
        dups += sum(map(int.__and__, b, union))
        union = bytearray(map(int.__or__, union, b))
    received = sum(union)
    lost = sum(1 for a, u in zip(acked_bits, union) if a and not u)
    extra = sum(1 for a, u in zip(acked_bits, union) if u and not a)  # received, never acknowledged
    return received, lost, dups, extra


def consumer_problems(results):
    out = [f"{r['name']}: {r['error']}" for r in results if r["error"]]
    out += [f"{r['name']}: {r['foreign']} messages not of this run, e.g. {r['sample']!r}" for r in results
            if r["foreign"]]
    return out


# ---------------------------------------------------------------------------------------
# Scenarios


def run_enqueue(srv, tag, a):
    q = Q(srv, f"enq-{tag}", a.jobs)
    q.create()
    lat = []
    cpu0, self0 = srv.cpu(), sb.self_cpu_secs()
    r = asyncio.run(produce(q, a.jobs, a.window, a.size, lat, client_id=f"enq-{tag}"))
    cpu, mine = srv.cpu() - cpu0, sb.self_cpu_secs() - self0
    lat.sort()
    m = {"msgs_per_sec": r["acked"] / r["secs"], "acked": r["acked"], "lost": r["lost"], "failed": r["failed"],
         "dups": None, "p50_ms": sb.pct(lat, 0.5) / 1e6, "p99_ms": sb.pct(lat, 0.99) / 1e6,
         "server_cpu_us": cpu * 1e6 / max(r["acked"], 1), "client_cpu_us": mine * 1e6 / max(r["acked"], 1),
         "problems": r["errors"]}
    return m, (q, r["acked_bits"])


def fill(srv, tag, a):
    """Stores a.jobs jobs for (b) when (a) did not."""
    q = Q(srv, f"fill-{tag}", a.jobs)
    q.create()
    r = asyncio.run(produce(q, a.jobs, a.window, a.size, None, client_id=f"fill-{tag}"))
    if r["errors"]:
        print(f"  fill {srv.name} {tag}: {r['errors']}", file=sys.stderr)
    return q, r["acked_bits"]


def run_drain(srv, tag, a, ctx, stored):
    q, acked_bits = stored
    expected = sum(acked_bits)
    q.add_consumer()
    cons = Consumers(q, tag, a.jobs, ctx, latency=False)
    results = []
    try:
        cpu0, self0 = srv.cpu(), sb.self_cpu_secs()
        t0 = cons.go()
        cons.wait(lambda: expected, a.settle)
    finally:
        results = cons.finish()
    cpu, mine = srv.cpu() - cpu0, sb.self_cpu_secs() - self0
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


def run_e2e(srv, tag, a, ctx):
    n = int(a.rate * a.e2e_secs)
    q = Q(srv, f"e2e-{tag}", n)
    q.create(with_consumer=True)
    cons = Consumers(q, tag, n, ctx, latency=True)
    results, pub = [], None
    try:
        cons.go()
        time.sleep(0.3)  # subscribed, pulls waiting, basic.consume done
        cpu0, self0 = srv.cpu(), sb.self_cpu_secs()
        t0 = time.monotonic()
        pub = asyncio.run(produce(q, n, a.window, a.size, None, rate=a.rate, client_id=f"e2e-pub-{tag}"))
        secs = time.monotonic() - t0
        cons.wait(lambda: pub["acked"], a.settle)
    finally:
        results = cons.finish()
    cpu, mine = srv.cpu() - cpu0, sb.self_cpu_secs() - self0
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
            "left": left, "p50_ms": sb.pct(lat, 0.5) / 1e6, "p99_ms": sb.pct(lat, 0.99) / 1e6,
            "p999_ms": sb.pct(lat, 0.999) / 1e6, "max_ms": (lat[-1] / 1e6) if lat else float("nan"),
            "split": [sum(r["bits"]) for r in results],
            "server_cpu_us": cpu * 1e6 / max(received, 1),
            "client_cpu_us": (mine + members_cpu) * 1e6 / max(received, 1),
            "producer_cpu_secs": round(mine, 3), "consumers_cpu_secs": round(members_cpu, 3), "problems": problems}


# ---------------------------------------------------------------------------------------
# Report


PEERS = ("rabbitmq", "jetstream")


def markdown(res, info, a, cmd):
    n0 = lambda v: f"{v:,.0f}"
    ms = lambda v: f"{v:.2f} ms"
    f1 = lambda v: f"{v:.1f}"
    span = sb.span
    systems = res["systems"]
    rounds = len(res["rounds"])
    out = [f"Machine: {info['nproc']} vCPUs ({info['cpu']}), load average {info['load']} at the start; "
           f"{info['date']}; {info['mote']} ({info['mote_id']}; the tree at {info['git']}); "
           f"RabbitMQ {info['rabbitmq']} on Erlang {info['erlang']}; {info['nats']}; Python {info['python']}, "
           f"nats-py {info['nats_py']} (setup only); {info['secs']} s in all.", "",
           f"Command: `{cmd}`", "",
           f"Payload {a.size} B; enqueue window {a.window}; prefetch {PREFETCH} per consumer; {rounds} round(s); "
           "median (min–max) over the rounds whose measurement no other process disturbed (\"rounds used\"); "
           "lost/dups summed over every measurement; CPU is µs per job (server: its process; client: the "
           "Python load generator's processes).", ""]
    peers = [p for p in PEERS if p in systems]

    def table(title, scen, cols, key="msgs_per_sec", ratio_label="", lower_better=False):
        rows = [s for s in systems if all(r.get(s, {}).get(scen) for r in res["rounds"])]
        if not rows:
            return
        every = {s: [r[s][scen] for r in res["rounds"]] for s in rows}
        used = {s: [x for x in xs if not x.get("busy")] or xs for s, xs in every.items()}
        med = {s: statistics.median(x[key] for x in used[s]) for s in rows}
        rh = "".join(f" {ratio_label}÷ {p} |" for p in peers)
        out.extend([title, "", "| server | " + ("msgs/s" if key == "msgs_per_sec" else "e2e p99") + " |" + rh
                    + " rounds used | " + " | ".join(c[0] for c in cols) + " |",
                    "|---|---:|" + "---:|" * len(peers) + "---:|" + "---:|" * len(cols)])
        for s in rows:
            xs = used[s]
            ratios = "".join(f" **{med[s] / med[p]:.2f}×** |" if p in med and med[p] else " – |" for p in peers)
            flag = " ⚠ lossy" if any(x["lost"] for x in every[s]) else ""
            disturbed = all(x.get("busy") for x in every[s])
            n_used = f"{len(xs)} of {len(every[s])}" + (" (all disturbed)" if disturbed else "")
            fmt = n0 if key == "msgs_per_sec" else ms
            out.append(f"| {s} | {span([x[key] for x in xs], fmt)}{flag} |{ratios} {n_used} | "
                       + " | ".join(c[1](every[s] if c[0] in ("lost", "dups", "left after") else xs) for c in cols)
                       + " |")
        out.append("")

    lost = ("lost", lambda xs: str(sum(x["lost"] for x in xs)))
    dups = ("dups", lambda xs: str(sum(x["dups"] for x in xs)))
    left = ("left after", lambda xs: ", ".join(str(x["left"]) for x in xs) if any(x["left"] is not None for x in xs)
            else "–")
    scpu = ("server CPU µs/job", lambda xs: span([x["server_cpu_us"] for x in xs], f1))
    ccpu = ("client CPU µs/job", lambda xs: span([x["client_cpu_us"] for x in xs], f1))
    table(f"**(a) Enqueue with durable acknowledgements: {a.jobs:,} jobs, one connection, {a.window} in "
          "flight.**", "enqueue",
          [("ack p50", lambda xs: span([x["p50_ms"] for x in xs], ms)),
           ("ack p99", lambda xs: span([x["p99_ms"] for x in xs], ms)), lost, ("dups", lambda xs: "–"), scpu, ccpu])
    table(f"**(b) Drain of {a.jobs:,} stored jobs by 2 competing consumers, an ack per job, prefetch "
          f"{PREFETCH} each.**", "drain",
          [lost, dups, left, ("split", lambda xs: " / ".join(f"{v:,}" for v in xs[-1]["split"])), scpu, ccpu])
    table(f"**(c) End to end: one producer at {a.rate:,.0f} jobs/s for {a.e2e_secs:g} s "
          f"({int(a.rate * a.e2e_secs):,} jobs, window {a.window}), 2 consumers acking (prefetch {PREFETCH} "
          "each). Ratios: mote's p99 ÷ the peer's (lower is better).**", "e2e",
          [("e2e p50", lambda xs: span([x["p50_ms"] for x in xs], ms)),
           ("e2e p99.9", lambda xs: span([x["p999_ms"] for x in xs], ms)),
           ("e2e max", lambda xs: span([x["max_ms"] for x in xs], ms)),
           ("enqueued/s", lambda xs: span([x["msgs_per_sec"] for x in xs], n0)), lost, dups,
           ("split", lambda xs: " / ".join(f"{v:,}" for v in xs[-1]["split"])), scpu, ccpu],
          key="p99_ms", ratio_label="p99 ")
    problems = [f"round {i + 1} {s} {scen}: {p}" for i, r in enumerate(res["rounds"]) for s, sc in r.items()
                for scen, v in sc.items() for p in v.get("problems", [])]
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
    problems += [f"round {i + 1} {s} {scen}: busy machine (other processes {v['foreign_cpu']:.0%} CPU, "
                 f"{v['foreign_disk_mb']:.0f} MB written)" for i, r in enumerate(res["rounds"]) for s, sc in r.items()
                 for scen, v in sc.items() if v["busy"]]
    problems += res.get("notes", [])
    if res.get("cut"):
        problems.append(res["cut"])
    if problems:
        out += ["**Problems and notes (a figure with losses is not a throughput):**", ""] + [f"- {p}" for p in problems]
    return "\n".join(out)


def machine_info(a):
    info = sb.machine_info(a)
    info["rabbitmq"] = sb.sh(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"]) or "?"
    info["erlang"] = sb.sh(["dpkg-query", "-W", "-f", "${Version}", "erlang-base"]) or "?"
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
    ap.add_argument("--max-foreign", type=float, default=0.10,
                    help="a measurement during which other processes used more of the CPU is repeated")
    ap.add_argument("--max-foreign-mb", type=float, default=64,
                    help="... or wrote more megabytes to disk (estimated; only with 3 %% of foreign CPU)")
    ap.add_argument("--retries", type=int, default=2, help="repetitions of a measurement on a busy machine")
    ap.add_argument("--retry-wait", type=float, default=5.0, help="seconds before repeating one")
    ap.add_argument("--budget", type=float, default=660,
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
        print(markdown(saved["results"], saved["info"], argparse.Namespace(**saved["args"]), saved["cmd"]))
        return
    if a.quick:
        a.jobs, a.e2e_secs, a.rounds = 20_000, 4, 1
    a.size = max(a.size, SEQ.size)
    only = a.only.split(",")
    scenarios = a.scenarios.split(",")
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
                    servers[s] = sb.MoteServer(s, mote, d)
                elif s.startswith("mote/fsync="):
                    servers[s] = sb.MoteServer(s, mote, d, s.split("=", 1)[1])
                elif s == "jetstream":
                    servers[s] = sb.NatsServer(s, a.nats_server, d)
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
        for i in range(a.rounds):
            spent = time.monotonic() - started
            if i and spent + (spent - setup_secs) / i > a.budget:
                res["cut"] = f"stopped after {i} of {a.rounds} rounds: another would pass --budget {a.budget:g} s"
                print(res["cut"], file=sys.stderr)
                break
            order = only if i % 2 == 0 else only[::-1]
            r = {s: {} for s in only}
            stored = {}
            for scen in scenarios:
                for s in order:
                    srv = servers[s]
                    for attempt in range(a.retries + 1):
                        tag = f"r{i}" + (f"x{attempt}" if attempt else "")
                        if scen == "drain" and (attempt or s not in stored):
                            stored[s] = fill(srv, f"d{tag}", a)  # not measured
                        noise = Foreign(list(servers.values()))
                        if scen == "enqueue":
                            m, stored[s] = run_enqueue(srv, tag, a)
                        elif scen == "drain":
                            m = run_drain(srv, tag, a, ctx, stored.pop(s))
                        else:
                            m = run_e2e(srv, tag, a, ctx)
                        m.update(noise.stop(), attempts=attempt + 1)
                        m["busy"] = (m["foreign_cpu"] > a.max_foreign
                                     or (m["foreign_disk_mb"] > a.max_foreign_mb and m["foreign_cpu"] > 0.03))
                        print(f"round {i + 1} {s} {scen} {json.dumps(m)}", file=sys.stderr)
                        if not m["busy"]:
                            break
                        if attempt < a.retries and time.monotonic() - started < a.budget:
                            print(f"  busy machine (other processes: {m['foreign_cpu']:.0%} CPU, "
                                  f"{m['foreign_disk_mb']:.0f} MB written); again in {a.retry_wait:g} s",
                                  file=sys.stderr)
                            time.sleep(a.retry_wait)
                        else:
                            break
                    r[s][scen] = m
            res["rounds"].append(r)
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
