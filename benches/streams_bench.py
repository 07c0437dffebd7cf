#!/usr/bin/env python3
"""Streams: Mote's `$stream/NAME` beside NATS JetStream, side by side in one invocation.

Three servers run for the whole invocation, each with a data directory of its own in a
temporary directory (removed at the end):

  mote             `mote --data-dir D` with its default durability (`--fsync always`: a
                   PUBACK comes after the append is fsynced);
  mote/fsync=never `mote --data-dir D --fsync never` (written, synced by the OS), which is
                   what JetStream's file store promises (it forces a sync every 2
                   minutes; nats-server 2.9 has no per-write sync);
  jetstream        `nats-server -js -sd D -p PORT`, file-backed streams.

Both Motes get `[mqtt] max_inflight = 1024` so that the readers' Receive Maximum (below)
is what bounds their window, as `max_ack_pending` and the pull size do for JetStream.

Scenarios, 64-byte payloads (--size) carrying a sequence number and the send time; every
message is checked by its sequence number, so loss and duplicates are counted (a
throughput with losses is not a throughput: such a figure is flagged):

(a) append: one connection publishes --append messages with --window (256) publishes in
    flight. Mote: MQTT 5 QoS 1 PUBLISH to `$stream/NAME`, the PUBACK is the durable
    acknowledgement. JetStream: PUB to the stream's subject with a reply subject, the
    PubAck is the acknowledgement. msgs/s (first send to last ack), p50/p99 ack latency.
(b) replay: one reader reads --replay stored messages (appended once per server before
    the first round; that fill's rate is shown too) from the earliest. Mote: MQTT 5
    SUBSCRIBE QoS 1 to `$stream/NAME` with the user property stream-offset=earliest,
    Receive Maximum 1000, a PUBACK per message. JetStream: a new pull consumer (deliver
    all, explicit ack, max_ack_pending 1000), pulls of 500 with at most 1000 messages
    requested and not yet received, an ack per message. (b') the same without acks:
    Mote QoS 0 (the reader commits on sending) beside a pull consumer with AckPolicy
    none. msgs/s (subscribe to last message). Not run for mote/fsync=never (reading
    does not sync).
(c) group: --group messages over --keys (64) keys, published as in (a) while a group of
    2 members (2 processes) consumes them with an ack per message. Mote:
    `$share/g/$stream/NAME` (the key is the topic `$stream/NAME/kI`), Receive Maximum
    512 per member, subscribed before the first publish with stream-offset=earliest.
    JetStream: a durable pull consumer (explicit ack, max_ack_pending 1024) on subjects
    NAME.kI, 2 workers each keeping at most 512 messages requested (pulls of 256).
    msgs/s consumed (first send to last receipt) and p50/p99 end-to-end latency (send
    to receipt, one clock). Mote gives each key to one member (per-key order), so the
    split between the members follows the keys; JetStream's pull consumer has no keys.

The load generator is Python: both sides use a client written here on raw asyncio
sockets (MQTT 5 and the NATS text protocol, the same few lines each; nats-py only sets
up streams and consumers), with the same windows and batched writes. Python may be the
bottleneck: the client's and the server's CPU per message are reported so that it shows.
--rounds rounds (3), the servers in alternating order in each scenario; medians
(min-max); ratios mote / jetstream of the medians. The machine may be shared: each
measurement also estimates the CPU and disk writes of other processes and is repeated
(--retries, after --retry-wait s) when they pass --max-foreign / --max-foreign-mb; a
measurement still disturbed is kept and flagged (and left out of the medians when another
round is not). These are estimates: a server's own fsyncs keep the kernel's journal
threads busy, which counts as "other" (a few % of CPU and tens of MB per run for
`--fsync always`). No round starts once one more would pass --budget seconds. --quick:
20,000 messages per scenario, 1 round.

Usage (from the repository root):
    cargo build --release -p mote-broker
    python3 benches/streams_bench.py [--mote target/release/mote] [--quick] [--out FILE.json]
Needs nats-server (apt-get install nats-server) and nats-py (pip install nats-py).
"""

import argparse
import asyncio
import datetime
import hashlib
import json
import multiprocessing as mp
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
MOTE_CONFIG = "[mqtt]\nmax_inflight = 1024\nreceive_maximum = 1024\n"
KEYS = 64  # keys in (c): --keys
REPLAY_WINDOW = 1000
GROUP_WINDOW = 512
SEQ = struct.Struct(">QQ")  # payload: sequence number, send time (ns), then padding


# ---------------------------------------------------------------------------------------
# Processes


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def proc_cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


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


def self_and_children_cpu_secs():
    """This process's CPU and its reaped children's (the group's member processes)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def machine_cpu_secs():
    """(busy, total) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / CLK_TCK, sum(v) / CLK_TCK


def disk_written_bytes():
    """Bytes written to the machine's disks (not partitions) since boot."""
    total = 0
    with open("/proc/diskstats") as f:
        for line in f:
            p = line.split()
            if re.fullmatch(r"(?:[shv]d|xvd)[a-z]+|nvme\d+n\d+", p[2]):
                total += int(p[9]) * 512
    return total


def proc_written_bytes(pid):
    try:
        with open(f"/proc/{pid}/io") as f:
            return int(re.search(r"^write_bytes: (\d+)", f.read(), re.M).group(1))
    except (OSError, AttributeError):
        return 0


class Foreign:
    """What other processes did to the machine during a measurement: the CPU that neither
    the servers nor the load generator used, as a fraction of the machine, and the bytes
    written to disk that the servers did not write (both estimates)."""

    def __init__(self, servers):
        self.servers = servers
        os.sync()  # start from clean page cache, so that older writes are not counted
        self.busy0, self.total0 = machine_cpu_secs()
        self.cpu0 = sum(s.cpu() for s in servers)
        self.disk0 = disk_written_bytes()
        self.w0 = sum(proc_written_bytes(s.proc.pid) for s in servers)
        self.mine0 = self_and_children_cpu_secs()

    def stop(self):
        busy, total = machine_cpu_secs()
        cpu = sum(s.cpu() for s in self.servers) - self.cpu0
        other = (busy - self.busy0) - cpu - (self_and_children_cpu_secs() - self.mine0)
        mine = sum(proc_written_bytes(s.proc.pid) for s in self.servers) - self.w0
        disk = (disk_written_bytes() - self.disk0) - mine
        return {"foreign_cpu": round(max(other, 0.0) / max(total - self.total0, 1e-9), 4),
                "foreign_disk_mb": round(max(disk, 0) / 1e6, 1)}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    kind = ""

    def cpu(self):
        return proc_cpu_secs(self.proc.pid)

    def stop(self):
        reap(self.proc)
        self.log.close()

    def tail(self):
        return open(self.log.name, errors="replace").read()[-2000:]


class MoteServer(Server):
    kind = "mqtt"

    def __init__(self, name, exe, work, fsync=None):
        self.name, self.work = name, work
        os.makedirs(work)
        cfg = os.path.join(work, "mote.toml")
        with open(cfg, "w") as f:
            f.write(MOTE_CONFIG)
        self.log = open(os.path.join(work, "mote.log"), "w+")
        cmd = [exe, "--config", cfg, "--data-dir", os.path.join(work, "data"), "--mqtt", "127.0.0.1:0",
               "--log", "warn,mote_broker::runtime::server=info"] + (["--fsync", fsync] if fsync else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log)
        end = time.monotonic() + 20
        while True:
            self.log.seek(0)
            m = re.search(r"listening mqtt=(\S+)", self.log.read())
            if m:
                break
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"mote did not start: {self.tail()}")
            time.sleep(0.02)
        host, port = m.group(1).rsplit(":", 1)
        self.addr = (host, int(port))

    def warnings(self):
        self.log.seek(0)
        return [line for line in self.log.read().splitlines() if " WARN " in line or " ERROR " in line]


class NatsServer(Server):
    kind = "nats"

    def __init__(self, name, exe, work):
        self.name, self.work = name, work
        os.makedirs(work)
        port = free_port()
        self.log = open(os.path.join(work, "nats.log"), "w+")
        self.proc = subprocess.Popen([exe, "-js", "-sd", os.path.join(work, "js"), "-a", "127.0.0.1", "-p", str(port)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log)
        end = time.monotonic() + 20
        while True:
            self.log.seek(0)
            if "Server is ready" in self.log.read():
                break
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"nats-server did not start: {self.tail()}")
            time.sleep(0.02)
        self.addr = ("127.0.0.1", port)

    def warnings(self):
        self.log.seek(0)
        return [line for line in self.log.read().splitlines() if "[WRN]" in line or "[ERR]" in line]


# ---------------------------------------------------------------------------------------
# A lean MQTT 5 client on asyncio streams (only what the scenarios use)


def varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def mstr(s):
    s = s.encode() if isinstance(s, str) else s
    return len(s).to_bytes(2, "big") + s


def mprops(*items):
    body = b"".join(items)
    return varint(len(body)) + body


def user_prop(k, v):
    return b"\x26" + mstr(k) + mstr(v)


def mpacket(first, body):
    return bytes([first]) + varint(len(body)) + body


def read_varint(buf, i):
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7


# Property id -> kind (MQTT 5, section 2.2.2.2): 1 byte, 2 = u16, 4 = u32, "v" varint,
# "s" string, "b" binary, "p" string pair.
PROP_KIND = {0x01: 1, 0x02: 4, 0x03: "s", 0x08: "s", 0x09: "b", 0x0B: "v", 0x11: 4, 0x12: "s", 0x13: 2,
             0x15: "s", 0x16: "b", 0x17: 1, 0x18: 4, 0x19: 1, 0x1A: "s", 0x1C: "s", 0x1F: "s", 0x21: 2,
             0x22: 2, 0x23: 2, 0x24: 1, 0x25: 1, 0x26: "p", 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1}


def parse_props(buf, i):
    """Returns ({id: value, 0x26: [(k, v), ...]}, index after the properties)."""
    n, i = read_varint(buf, i)
    end, out = i + n, {}
    while i < end:
        pid = buf[i]
        kind = PROP_KIND[pid]
        i += 1
        if kind in (1, 2, 4):
            val = int.from_bytes(buf[i:i + kind], "big")
            i += kind
        elif kind == "v":
            val, i = read_varint(buf, i)
        elif kind in ("s", "b"):
            ln = int.from_bytes(buf[i:i + 2], "big")
            val = bytes(buf[i + 2:i + 2 + ln])
            i += 2 + ln
        else:
            kl = int.from_bytes(buf[i:i + 2], "big")
            k = bytes(buf[i + 2:i + 2 + kl])
            i += 2 + kl
            vl = int.from_bytes(buf[i:i + 2], "big")
            val = (k, bytes(buf[i + 2:i + 2 + vl]))
            i += 2 + vl
            out.setdefault(0x26, []).append(val)
            continue
        out[pid] = val
    return out, end


class Mqtt:
    """One MQTT 5 connection: next() returns the complete packets read so far as
    (buffer, [(first byte, body start, body end), ...]), reading more when there are none."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer
        self.buf = b""
        self.server_receive_max = 65535

    @classmethod
    async def connect(cls, addr, client_id, receive_max=65535, session_expiry=0, clean=True):
        reader, writer = await asyncio.open_connection(*addr, limit=1 << 20)
        writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = cls(reader, writer)
        body = (mstr("MQTT") + b"\x05" + bytes([0x02 if clean else 0]) + (60).to_bytes(2, "big")
                + mprops(b"\x11" + session_expiry.to_bytes(4, "big"), b"\x21" + receive_max.to_bytes(2, "big"))
                + mstr(client_id))
        writer.write(mpacket(0x10, body))
        first, body, _ = await c.read_one(10)
        if first >> 4 != 2 or body[1] != 0:
            raise RuntimeError(f"CONNACK refused: type {first >> 4} reason 0x{body[1]:02x}")
        props, _ = parse_props(body, 2)
        c.server_receive_max = props.get(0x21, 65535)
        return c

    async def read_one(self, timeout):
        """The next packet as (first byte, body, its raw bytes), for handshakes."""
        end = time.monotonic() + timeout
        while True:
            buf = self.buf
            if len(buf) >= 2:
                try:
                    rl, h = read_varint(buf, 1)
                except IndexError:
                    rl, h = 1 << 30, 0
                if len(buf) >= h + rl:
                    self.buf = buf[h + rl:]
                    return buf[0], buf[h:h + rl], buf[:h + rl]
            data = await asyncio.wait_for(self.r.read(1 << 16), max(0.01, end - time.monotonic()))
            if not data:
                raise ConnectionError("connection closed")
            self.buf += data

    async def subscribe(self, topic_filter, qos, user_props=(), pid=1):
        props = mprops(*(user_prop(k, v) for k, v in user_props))
        self.w.write(mpacket(0x82, pid.to_bytes(2, "big") + props + mstr(topic_filter) + bytes([qos])))
        held = []  # a server may deliver before its SUBACK: keep those for next()
        while True:
            first, body, raw = await self.read_one(10)
            if first >> 4 == 9:
                break
            held.append(raw)
        self.buf = b"".join(held) + self.buf
        _, i = parse_props(body, 2)
        if body[i] >= 0x80:
            raise RuntimeError(f"SUBACK refused {topic_filter!r}: 0x{body[i]:02x}")
        return body[i]

    async def next(self, timeout=None):
        """(buffer, packets), or None after `timeout` s without a complete packet."""
        while True:
            buf = self.buf
            n, i, out = len(buf), 0, []
            while n - i >= 2:
                b = buf[i + 1]
                if b < 0x80:
                    rl, h = b, i + 2
                else:
                    try:
                        rl, h = read_varint(buf, i + 1)
                    except IndexError:
                        break
                if h + rl > n:
                    break
                out.append((buf[i], h, h + rl))
                i = h + rl
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

    def close(self):
        try:
            self.w.write(b"\xe0\x00")
            self.w.close()
        except (OSError, RuntimeError):
            pass


def mqtt_publish_packet_prefix(topic, size):
    """The bytes of a QoS 1 PUBLISH before its packet id, for `size`-byte payloads."""
    t = mstr(topic)
    return b"\x32" + varint(len(t) + 2 + 1 + size) + t


# ---------------------------------------------------------------------------------------
# A lean NATS client on asyncio streams (the text protocol: PUB, SUB, MSG, HMSG)


class Nats:
    def __init__(self, reader, writer):
        self.r, self.w = reader, writer
        self.buf = b""

    @classmethod
    async def connect(cls, addr):
        reader, writer = await asyncio.open_connection(*addr, limit=1 << 20)
        writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = cls(reader, writer)
        info = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
        if not info.startswith(b"INFO "):
            raise RuntimeError(f"not a NATS server: {info[:80]!r}")
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,'
                     b'"protocol":1,"lang":"python-raw","version":"0"}\r\nPING\r\n')
        while True:
            line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
            if line.startswith(b"PONG"):
                return c
            if line.startswith(b"-ERR"):
                raise RuntimeError(line.decode().strip())

    async def next(self, timeout=None):
        """A list of (subject, sid, reply, headers, payload), or None after `timeout` s
        without a complete message; answers PINGs."""
        while True:
            buf = self.buf
            n, i, out = len(buf), 0, []
            while True:
                e = buf.find(b"\r\n", i)
                if e < 0:
                    break
                op = buf[i:i + 4]
                if op == b"MSG ":
                    parts = buf[i + 4:e].split(b" ")
                    ln = int(parts[-1])
                    if e + 4 + ln > n:
                        break
                    out.append((parts[0], parts[1], parts[2] if len(parts) == 4 else None, None,
                                buf[e + 2:e + 2 + ln]))
                    i = e + 4 + ln
                elif op == b"HMSG":
                    parts = buf[i + 5:e].split(b" ")
                    hl, ln = int(parts[-2]), int(parts[-1])
                    if e + 4 + ln > n:
                        break
                    out.append((parts[0], parts[1], parts[2] if len(parts) == 5 else None,
                                buf[e + 2:e + 2 + hl], buf[e + 2 + hl:e + 2 + ln]))
                    i = e + 4 + ln
                else:
                    if op == b"PING":
                        self.w.write(b"PONG\r\n")
                    elif op == b"-ERR":
                        raise RuntimeError(buf[i:e].decode(errors="replace"))
                    i = e + 2
            self.buf = buf[i:]
            if out:
                return out
            try:
                data = await asyncio.wait_for(self.r.read(1 << 18), timeout)
            except asyncio.TimeoutError:
                return None
            if not data:
                raise ConnectionError("connection closed")
            self.buf += data

    def close(self):
        try:
            self.w.close()
        except (OSError, RuntimeError):
            pass


def nats_pending_from_status(headers):
    """How many messages a pull's status message (408, 409) says were not delivered."""
    m = re.search(rb"Nats-Pending-Messages:\s*(\d+)", headers or b"")
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------
# Stream setup (nats-py for JetStream's API; Mote needs none: streams are made on first use)


async def js_admin(addr, fn):
    import nats
    nc = await nats.connect(f"nats://{addr[0]}:{addr[1]}", connect_timeout=10)
    try:
        return await fn(nc.jetstream())
    finally:
        await nc.close()


def js_add_stream(addr, name, subjects):
    from nats.js.api import StorageType

    async def fn(js):
        await js.add_stream(name=name, subjects=subjects, storage=StorageType.FILE)
    asyncio.run(js_admin(addr, fn))


def js_add_consumer(addr, stream, durable, ack, max_ack_pending):
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    async def fn(js):
        cfg = ConsumerConfig(durable_name=durable, deliver_policy=DeliverPolicy.ALL,
                             ack_policy=AckPolicy.EXPLICIT if ack else AckPolicy.NONE,
                             max_ack_pending=max_ack_pending if ack else -1, max_waiting=512,
                             inactive_threshold=300.0)
        await js.add_consumer(stream, cfg)
    asyncio.run(js_admin(addr, fn))


def js_stream_messages(addr, stream):
    async def fn(js):
        return (await js.stream_info(stream)).state.messages
    return asyncio.run(js_admin(addr, fn))


def names(kind, scenario, tag, keys=None):
    """(where to publish for key i, what to read): the same names on both sides."""
    stream = f"{scenario}-{tag}"
    if kind == "mqtt":
        keyed = [f"$stream/{stream}/k{i}" for i in range(keys or KEYS)]
        return stream, (keyed if scenario == "group" else [f"$stream/{stream}"]), f"$stream/{stream}"
    subj = stream.replace("-", "_")
    keyed = [f"{subj}.k{i}" for i in range(keys or KEYS)]
    return subj.upper(), (keyed if scenario == "group" else [subj]), subj


# ---------------------------------------------------------------------------------------
# Publishing with a window (scenarios a and c, and the fill of b)


async def publish(kind, addr, topics, n, window, size, lat_ns=None, client_id="bench-pub", timeout=120.0):
    """Publishes n messages (message i to topics[i % len(topics)]) keeping `window`
    unacknowledged; returns counts and times. `lat_ns`: a list to append ack latencies to."""
    pad = b"p" * (size - SEQ.size)
    sent_ns = [0] * (65536 if kind == "mqtt" else n)
    st = {"acked": 0, "failed": 0, "errors": []}
    if kind == "mqtt":
        c = await Mqtt.connect(addr, client_id)
        window = min(window, c.server_receive_max)
        prefixes = [mqtt_publish_packet_prefix(t, size) for t in topics]
    else:
        c = await Nats.connect(addr)
        inbox = b"_INBOX." + os.urandom(8).hex().encode()
        c.w.write(b"SUB " + inbox + b".* 1\r\n")
        heads = [(b"PUB " + t.encode() + b" " + inbox + b".") for t in topics]
        tail = b" %d\r\n" % size
    inflight = 0
    progress = asyncio.Event()
    done = asyncio.get_running_loop().create_future()

    async def read_acks():
        nonlocal inflight
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
                        pid = (buf[s] << 8) | buf[s + 1]
                        if e - s > 2 and buf[s + 2] >= 0x80:
                            st["failed"] += 1
                            if len(st["errors"]) < 3:
                                st["errors"].append(f"PUBACK 0x{buf[s + 2]:02x}")
                        else:
                            st["acked"] += 1
                        if lat_ns is not None:
                            lat_ns.append(now - sent_ns[pid])
                        inflight -= 1
                else:
                    msgs = await c.next()
                    now = time.perf_counter_ns()
                    for subject, _, _, headers, payload in msgs:
                        seq = int(subject.rsplit(b".", 1)[1])
                        if headers is not None or b'"error"' in payload:
                            st["failed"] += 1
                            if len(st["errors"]) < 3:
                                st["errors"].append((headers or b"").decode(errors="replace")[:100]
                                                    + payload.decode(errors="replace")[:200])
                        else:
                            st["acked"] += 1
                        if lat_ns is not None:
                            lat_ns.append(now - sent_ns[seq])
                        inflight -= 1
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
            wall = wall0 + now
            parts = []
            if kind == "mqtt":
                for s in range(seq, seq + k):
                    pid = pid % 65535 + 1
                    sent_ns[pid] = now
                    parts.append(prefixes[s % len(prefixes)] + pid.to_bytes(2, "big") + b"\x00"
                                 + SEQ.pack(s, wall) + pad)
            else:
                for s in range(seq, seq + k):
                    sent_ns[s] = now
                    parts.append(heads[s % len(heads)] + b"%d" % s + tail + SEQ.pack(s, wall) + pad + b"\r\n")
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
        c.close()
    return {"sent": seq, "acked": st["acked"], "failed": st["failed"], "unacked": seq - st["acked"] - st["failed"],
            "lost": n - st["acked"], "secs": (t1 - t0) / 1e9, "errors": st["errors"]}


def pct(sorted_xs, q):
    return sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))] if sorted_xs else float("nan")


def run_append(srv, tag, a):
    _, topics, _ = names(srv.kind, "append", tag)
    if srv.kind == "nats":
        stream, subjects, _ = names("nats", "append", tag)
        js_add_stream(srv.addr, stream, subjects)
    lat = []
    cpu0, self0 = srv.cpu(), self_cpu_secs()
    r = asyncio.run(publish(srv.kind, srv.addr, topics, a.append, a.window, a.size, lat, f"append-{tag}"))
    cpu, mine = srv.cpu() - cpu0, self_cpu_secs() - self0
    lat.sort()
    return {"msgs_per_sec": r["acked"] / r["secs"], "acked": r["acked"], "lost": r["lost"], "failed": r["failed"],
            "p50_ms": pct(lat, 0.5) / 1e6, "p99_ms": pct(lat, 0.99) / 1e6,
            "server_cpu_us": cpu * 1e6 / max(r["acked"], 1), "client_cpu_us": mine * 1e6 / max(r["acked"], 1),
            "client_cpu_secs": mine, "problems": r["errors"]}


def fill(srv, a):
    """Appends a.replay messages to the replay stream once per server."""
    stream, topics, _ = names(srv.kind, "replay", "all")
    if srv.kind == "nats":
        js_add_stream(srv.addr, stream, topics)
    cpu0 = srv.cpu()
    r = asyncio.run(publish(srv.kind, srv.addr, topics, a.replay, a.window, a.size, None, "fill",
                            timeout=max(120.0, a.replay / 2000)))
    r["msgs_per_sec"] = r["acked"] / r["secs"]
    r["server_cpu_us"] = (srv.cpu() - cpu0) * 1e6 / max(r["acked"], 1)
    if srv.kind == "nats":
        r["stored"] = js_stream_messages(srv.addr, stream)
    return r


# ---------------------------------------------------------------------------------------
# Reading (scenario b and the members of c)


class Seen:
    """Which sequence numbers arrived, how many twice, and end-to-end latencies."""

    def __init__(self, n, latency=False):
        self.bits = bytearray(n)
        self.unique = self.dups = self.foreign = 0
        self.lat_ns = [] if latency else None
        self.first = self.last = 0
        self.sample = None

    def add(self, payload, now_wall):
        if len(payload) < SEQ.size:
            self.foreign += 1
            self.sample = bytes(payload[:100])
            return
        seq, sent = SEQ.unpack_from(payload)
        if seq >= len(self.bits):
            self.foreign += 1
        elif self.bits[seq]:
            self.dups += 1
        else:
            self.bits[seq] = 1
            self.unique += 1
        if self.lat_ns is not None:
            self.lat_ns.append(now_wall - sent)


async def mqtt_read(addr, client_id, topic_filter, qos, receive_max, start, seen, n, stop, ready=None,
                    on_chunk=None, idle=5.0):
    """Reads until `seen` has n messages, `stop()` is true, or nothing came for `idle` s."""
    c = await Mqtt.connect(addr, client_id, receive_max=receive_max)
    props = [("stream-offset", start)] if start else []
    try:
        await c.subscribe(topic_filter, qos, props)
        if ready:
            ready()
        quiet_since = time.monotonic()
        while seen.unique < n and not stop():
            got = await c.next(0.2)
            if got is None:
                if time.monotonic() - quiet_since > idle:
                    break
                continue
            buf, packets = got
            now = time.time_ns()
            acks = []
            for first, s, e in packets:
                if first >> 4 != 3:
                    continue
                i = s + 2 + ((buf[s] << 8) | buf[s + 1])  # after the topic
                if first & 0x06:
                    acks.append(b"\x40\x02" + buf[i:i + 2])
                    i += 2
                pl, i = read_varint(buf, i)  # properties (mote-offset...): skipped
                seen.add(buf[i + pl:e], now)
            if acks:
                c.w.write(b"".join(acks))
            seen.last = now
            quiet_since = time.monotonic()
            if on_chunk:
                on_chunk(seen)
    finally:
        c.close()


async def nats_pull_read(addr, stream, consumer, ack, batch, window, seen, n, stop, ready=None, on_chunk=None,
                         idle=5.0):
    """Pulls from a consumer keeping at most `window` messages requested and not received,
    until `seen` has n messages, `stop()` is true, or nothing came for `idle` s."""
    c = await Nats.connect(addr)
    inbox = b"_INBOX." + os.urandom(8).hex().encode()
    c.w.write(b"SUB " + inbox + b".* 1\r\n")
    api = b"$JS.API.CONSUMER.MSG.NEXT." + stream.encode() + b"." + consumer.encode()
    expires = 30 * 10**9
    pulls, outstanding = 0, 0

    def top_up():
        nonlocal pulls, outstanding
        parts = []
        while outstanding + batch <= window:
            body = b'{"batch":%d,"expires":%d}' % (batch, expires)
            parts.append(b"PUB " + api + b" " + inbox + b".%d %d\r\n" % (pulls, len(body)) + body + b"\r\n")
            pulls += 1
            outstanding += batch
        if parts:
            c.w.write(b"".join(parts))
    try:
        if ready:
            ready()
        top_up()
        quiet_since = time.monotonic()
        while seen.unique < n and not stop():
            msgs = await c.next(0.2)
            if msgs is None:
                if time.monotonic() - quiet_since > idle:
                    break
                continue
            now = time.time_ns()
            acks = []
            for subject, _, reply, headers, payload in msgs:
                if headers is not None and reply is None:  # a status: 408 the pull expired, 409 ...
                    left = nats_pending_from_status(headers)
                    outstanding -= batch if left is None else left
                    continue
                outstanding -= 1
                if len(payload) < SEQ.size:  # not a message of ours (reported)
                    seen.foreign += 1
                    seen.sample = (subject, reply, headers, payload)
                    continue
                seen.add(payload, now)
                if ack:
                    acks.append(b"PUB " + reply + b" 0\r\n\r\n")
            if acks:
                c.w.write(b"".join(acks))
            seen.last = now
            quiet_since = time.monotonic()
            top_up()
            if on_chunk:
                on_chunk(seen)
    finally:
        c.close()


def run_replay(srv, tag, a, acked):
    """Reads the whole replay stream from the earliest, with or without acks."""
    stream, _, read = names(srv.kind, "replay", "all")
    seen = Seen(a.replay)
    cpu0, self0 = srv.cpu(), self_cpu_secs()
    if srv.kind == "mqtt":
        t0 = time.time_ns()
        asyncio.run(mqtt_read(srv.addr, f"replay-{tag}", read, 1 if acked else 0, REPLAY_WINDOW, "earliest",
                              seen, a.replay, lambda: False))
    else:
        consumer = f"replay_{tag}"
        js_add_consumer(srv.addr, stream, consumer, acked, REPLAY_WINDOW)
        t0 = time.time_ns()
        asyncio.run(nats_pull_read(srv.addr, stream, consumer, acked, REPLAY_WINDOW // 2, REPLAY_WINDOW, seen,
                                   a.replay, lambda: False))
    cpu, mine = srv.cpu() - cpu0, self_cpu_secs() - self0
    secs = (seen.last - t0) / 1e9
    problems = [f"{seen.foreign} messages not of this run, e.g. {seen.sample!r}"] if seen.foreign else []
    return {"msgs_per_sec": seen.unique / secs if secs > 0 else 0.0, "received": seen.unique,
            "lost": a.replay - seen.unique, "dups": seen.dups,
            "server_cpu_us": cpu * 1e6 / max(seen.unique, 1), "client_cpu_us": mine * 1e6 / max(seen.unique, 1),
            "client_cpu_secs": mine, "problems": problems}


def member_main(kind, addr, name, stream, read, n, ready_q, stop_ev, count, out_q):
    """One member of the group, in a process of its own: reads until told to stop."""
    seen = Seen(n, latency=True)
    cpu0 = self_cpu_secs()
    error = None

    def on_chunk(s):
        count.value = s.unique + s.dups
    try:
        if kind == "mqtt":
            asyncio.run(mqtt_read(addr, name, f"$share/g/{read}", 1, GROUP_WINDOW, "earliest", seen, n + 1,
                                  stop_ev.is_set, lambda: ready_q.put(name), on_chunk, idle=1e9))
        else:
            asyncio.run(nats_pull_read(addr, stream, "g", True, GROUP_WINDOW // 2, GROUP_WINDOW, seen, n + 1,
                                       stop_ev.is_set, lambda: ready_q.put(name), on_chunk, idle=1e9))
    except Exception as e:  # noqa: BLE001 (reported)
        error = repr(e)
        ready_q.put(name)
    out_q.put({"name": name, "bits": bytes(seen.bits), "dups": seen.dups, "foreign": seen.foreign,
               "sample": seen.sample,
               "lat_ns": seen.lat_ns, "last": seen.last, "cpu": self_cpu_secs() - cpu0, "error": error})


def run_group(srv, tag, a, ctx):
    stream, topics, read = names(srv.kind, "group", tag, a.keys)
    if srv.kind == "nats":
        js_add_stream(srv.addr, stream, [f"{stream.lower()}.*"])
        js_add_consumer(srv.addr, stream, "g", True, 2 * GROUP_WINDOW)
    ready_q, out_q, stop_ev = ctx.Queue(), ctx.Queue(), ctx.Event()
    counts = [ctx.Value("q", 0, lock=False) for _ in range(2)]
    procs = [ctx.Process(target=member_main, args=(srv.kind, srv.addr, f"member-{tag}-{i}", stream, read,
                                                    a.group, ready_q, stop_ev, counts[i], out_q))
             for i in range(2)]
    for p in procs:
        p.start()
    results = []
    try:
        for _ in procs:
            ready_q.get(timeout=30)
        time.sleep(0.2)
        cpu0, self0 = srv.cpu(), self_cpu_secs()
        first = time.time_ns()
        pub = asyncio.run(publish(srv.kind, srv.addr, topics, a.group, a.window, a.size, None, f"group-pub-{tag}"))
        # Until the members have as many as were acknowledged, or nothing more comes.
        last, last_change = -1, time.monotonic()
        while any(p.is_alive() for p in procs):
            total = sum(c.value for c in counts)
            if total >= pub["acked"]:
                break
            if total != last:
                last, last_change = total, time.monotonic()
            elif time.monotonic() - last_change > a.settle:
                break
            time.sleep(0.02)
        stop_ev.set()
        results = [out_q.get(timeout=30) for _ in procs]
        cpu, mine = srv.cpu() - cpu0, self_cpu_secs() - self0
    finally:
        stop_ev.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join()
    union = bytearray(a.group)
    dups = sum(r["dups"] for r in results)
    for r in results:
        b = r["bits"]
        both = sum(1 for i in range(a.group) if b[i] and union[i])
        dups += both
        union = bytearray(x | y for x, y in zip(union, b))
    received = sum(union)
    lat = sorted(x for r in results for x in r["lat_ns"])
    secs = (max(r["last"] for r in results) - first) / 1e9
    members_cpu = sum(r["cpu"] for r in results)
    problems = pub["errors"] + [f"{r['name']}: {r['error']}" for r in results if r["error"]]
    problems += [f"{r['name']}: {r['foreign']} messages not of this run, e.g. {r['sample']!r}" for r in results
                 if r["foreign"]]
    return {"msgs_per_sec": received / secs if secs > 0 else 0.0, "published": pub["acked"], "received": received,
            "lost": pub["acked"] - received, "dups": dups, "p50_ms": pct(lat, 0.5) / 1e6,
            "p99_ms": pct(lat, 0.99) / 1e6, "split": [sum(r["bits"]) for r in results],
            "server_cpu_us": cpu * 1e6 / max(received, 1),
            "client_cpu_us": (mine + members_cpu) * 1e6 / max(received, 1), "client_cpu_secs": mine + members_cpu,
            "problems": problems}


# ---------------------------------------------------------------------------------------
# Report


def span(xs, fmt):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return f"{fmt(statistics.median(xs))} ({fmt(min(xs))}–{fmt(max(xs))})" if len(xs) > 1 else fmt(xs[0])


def markdown(res, info, a, cmd):
    n0 = lambda v: f"{v:,.0f}"
    ms = lambda v: f"{v:.2f} ms"
    f1 = lambda v: f"{v:.1f}"
    systems = [s for s in res["systems"]]
    rounds = len(res["rounds"])
    out = [f"Machine: {info['nproc']} vCPUs ({info['cpu']}), load average {info['load']} at the start; "
           f"{info['date']}; {info['mote']} ({info['mote_path']}, {info['mote_id']}; the tree at {info['git']}); "
           f"{info['nats']}; Python "
           f"{info['python']}, nats-py {info['nats_py']} (setup only); {info['secs']} s in all.", "",
           f"Command: `{cmd}`", "",
           f"Payload {a.size} B; append window {a.window}; {rounds} round(s); median (min–max) over the rounds "
           "whose measurement no other process disturbed (\"rounds used\"; see the end); lost/dups summed over "
           "every measurement; CPU is µs per message (server: its process; client: the Python load generator's "
           "processes).", "",
           "Servers: `mote` = `mote --data-dir D` (its default `--fsync always`: fsync before the PUBACK); "
           "`mote/fsync=never` = the same with `--fsync never` (written to the OS, synced by it); `jetstream` = "
           "`nats-server -js -sd D`, file storage (acknowledged once written to the OS; it forces a sync every "
           "2 minutes, and this version has no per-write sync).", ""]

    def table(title, scen, cols):
        rows = [s for s in systems if all(r.get(s, {}).get(scen) for r in res["rounds"])]
        if not rows:
            return
        # The figures come from the undisturbed measurements (all of them when none was);
        # lost and dups are summed over every measurement.
        every = {s: [r[s][scen] for r in res["rounds"]] for s in rows}
        used = {s: [x for x in xs if not x.get("busy")] or xs for s, xs in every.items()}
        med = {s: statistics.median(x["msgs_per_sec"] for x in used[s]) for s in rows}
        base = med.get("jetstream")
        out.extend([title, "", "| server | msgs/s | ÷ jetstream | rounds used | " + " | ".join(c[0] for c in cols)
                    + " |", "|---|---:|---:|---:|" + "---:|" * len(cols)])
        for s in rows:
            xs = used[s]
            ratio = f"**{med[s] / base:.2f}×**" if base else "–"
            flag = " ⚠ lossy" if any(x["lost"] for x in every[s]) else ""
            disturbed = all(x.get("busy") for x in every[s])
            n_used = f"{len(xs)} of {len(every[s])}" + (" (all disturbed)" if disturbed else "")
            out.append(f"| {s} | {span([x['msgs_per_sec'] for x in xs], n0)}{flag} | {ratio} | {n_used} | "
                       + " | ".join(c[1](every[s] if c[0] in ("lost", "dups") else xs) for c in cols) + " |")
        out.append("")

    lost = ("lost", lambda xs: str(sum(x["lost"] for x in xs)))
    dups = ("dups", lambda xs: str(sum(x["dups"] for x in xs)))
    scpu = ("server CPU µs/msg", lambda xs: span([x["server_cpu_us"] for x in xs], f1))
    ccpu = ("client CPU µs/msg", lambda xs: span([x["client_cpu_us"] for x in xs], f1))
    fills = res.get("fill", {})
    if fills:
        out += [f"**Fill: {a.replay:,} messages appended once per server for (b)** (one connection, window "
                f"{a.window}).", "", "| server | msgs/s | acked / sent | stored | server CPU µs/msg |",
                "|---|---:|---:|---:|---:|"]
        for s, f in fills.items():
            out.append(f"| {s} | {f['msgs_per_sec']:,.0f} | {f['acked']:,} / {f['sent']:,} | {f.get('stored', '–')} "
                       f"| {f['server_cpu_us']:.1f} |")
        out.append("")
    table(f"**(a) Append with durable acknowledgements: {a.append:,} messages, one connection, "
          f"{a.window} in flight.**", "append",
          [("ack p50", lambda xs: span([x["p50_ms"] for x in xs], ms)),
           ("ack p99", lambda xs: span([x["p99_ms"] for x in xs], ms)), lost, scpu, ccpu])
    table(f"**(b) Replay of {a.replay:,} stored messages from the earliest, an ack per message "
          f"(window {REPLAY_WINDOW}).**", "replay", [lost, dups, scpu, ccpu])
    table("**(b') The same replay without acks (Mote QoS 0; JetStream AckPolicy none).**", "replay0",
          [lost, dups, scpu, ccpu])
    table(f"**(c) Group of 2 members consuming with an ack per message while {a.group:,} messages over "
          f"{a.keys} keys are appended (window {GROUP_WINDOW} per member).**", "group",
          [("e2e p50", lambda xs: span([x["p50_ms"] for x in xs], ms)),
           ("e2e p99", lambda xs: span([x["p99_ms"] for x in xs], ms)), lost, dups,
           ("split", lambda xs: " / ".join(f"{v:,}" for v in xs[-1]["split"])), scpu, ccpu])
    problems = [f"round {i + 1} {s} {scen}: {p}" for i, r in enumerate(res["rounds"]) for s, sc in r.items()
                for scen, v in sc.items() for p in v.get("problems", [])]
    problems += [f"fill {s}: {p}" for s, f in fills.items() for p in f.get("errors", [])]
    problems += [f"{s} log: {w}" for s, ws in res.get("warnings", {}).items() for w in ws[:5]]
    ms_all = [v for r in res["rounds"] for sc in r.values() for v in sc.values()]
    if ms_all:
        fc = sorted(v["foreign_cpu"] for v in ms_all)
        fd = sorted(v["foreign_disk_mb"] for v in ms_all)
        out.append(f"Other processes during the measurements (estimates): CPU median {fc[len(fc) // 2]:.0%}, max "
                   f"{fc[-1]:.0%} of the machine; disk writes median {fd[len(fd) // 2]:.0f} MB, max {fd[-1]:.0f} MB; "
                   f"{sum(v['attempts'] - 1 for v in ms_all)} measurement(s) repeated for that, "
                   f"{sum(1 for v in ms_all if v['busy'])} still busy after {a.retries} repetitions (kept, flagged).")
        out.append("")
    problems += [f"round {i + 1} {s} {scen}: busy machine (other processes {v['foreign_cpu']:.0%} CPU, "
                 f"{v['foreign_disk_mb']:.0f} MB written)" for i, r in enumerate(res["rounds"]) for s, sc in r.items()
                 for scen, v in sc.items() if v["busy"]]
    if res.get("cut"):
        problems.append(res["cut"])
    if problems:
        out += ["**Problems (a figure with losses is not a throughput):**", ""] + [f"- {p}" for p in problems]
    return "\n".join(out)


def machine_info(a):
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    commit = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = sh(["git", "-C", ROOT, "status", "--porcelain", "--", "broker", "codec"])
    try:
        from importlib.metadata import version
        nats_py = version("nats-py")
    except Exception:  # noqa: BLE001
        nats_py = "?"
    mote_id = ""
    if os.path.exists(a.mote):
        with open(a.mote, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        built = datetime.datetime.fromtimestamp(os.path.getmtime(a.mote), datetime.timezone.utc)
        mote_id = f"sha256 {digest}…, built {built.strftime('%Y-%m-%d %H:%M UTC')}"
    return {
        "mote_id": mote_id,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
        "load": open("/proc/loadavg").read().split()[0], "mote": sh([a.mote, "--version"]), "mote_path": a.mote,
        "nats": sh([a.nats_server, "--version"]), "python": platform.python_version(), "nats_py": nats_py,
        "git": commit + (" + uncommitted changes in broker/ or codec/" if dirty else ""),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mote", default=os.environ.get("MOTE_BIN", os.path.join(ROOT, "target/release/mote")),
                    help="the broker (default: $MOTE_BIN, else target/release/mote)")
    ap.add_argument("--nats-server", default=shutil.which("nats-server") or "nats-server")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--append", type=int, default=200_000, help="messages in (a)")
    ap.add_argument("--replay", type=int, default=1_000_000, help="stored messages read in (b)")
    ap.add_argument("--group", type=int, default=200_000, help="messages in (c)")
    ap.add_argument("--size", type=int, default=64, help="payload bytes (at least 16)")
    ap.add_argument("--keys", type=int, default=KEYS, help="keys in (c): the topics $stream/NAME/kI")
    ap.add_argument("--window", type=int, default=256, help="publishes in flight")
    ap.add_argument("--max-foreign", type=float, default=0.10,
                    help="a measurement during which other processes used more of the CPU is repeated")
    ap.add_argument("--max-foreign-mb", type=float, default=64,
                    help="... or wrote more megabytes to disk (estimated; only with 3 %% of foreign CPU)")
    ap.add_argument("--retries", type=int, default=3, help="repetitions of a measurement on a busy machine")
    ap.add_argument("--retry-wait", type=float, default=15.0, help="seconds before repeating one")
    ap.add_argument("--budget", type=float, default=600, help="seconds: no new round once one more would pass it")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds without progress before the rest counts as lost")
    ap.add_argument("--only", default="mote,mote/fsync=never,jetstream", help="servers, comma-separated")
    ap.add_argument("--scenarios", default="append,replay,replay0,group")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 20,000 messages each, 1 round")
    ap.add_argument("--out", help="also write every measurement as JSON here")
    ap.add_argument("--from-json", help="print the tables of a run saved with --out, and exit")
    a = ap.parse_args()
    if a.from_json:
        with open(a.from_json) as f:
            saved = json.load(f)
        print(markdown(saved["results"], saved["info"], argparse.Namespace(**saved["args"]), saved["cmd"]))
        return
    if a.quick:
        a.append = a.replay = a.group = 20_000
        a.rounds = 1
    a.size = max(a.size, SEQ.size)
    only = a.only.split(",")
    scenarios = a.scenarios.split(",")
    if any(s.startswith("mote") for s in only) and not os.access(a.mote, os.X_OK):
        sys.exit(f"{a.mote} is missing: cargo build --release -p mote-broker (or --mote / MOTE_BIN)")
    if "jetstream" in only and not shutil.which(a.nats_server):
        sys.exit("nats-server is missing: apt-get install nats-server")
    cmd = "python3 benches/streams_bench.py " + " ".join(sys.argv[1:])
    info = machine_info(a)
    ctx = mp.get_context("spawn")
    started = time.monotonic()
    res = {"systems": only, "fill": {}, "rounds": [], "warnings": {}}
    servers = {}
    work = tempfile.mkdtemp(prefix="streams-bench-")
    try:
        if any(s.startswith("mote") for s in only):
            # Run a private copy: a rebuild of the original during the run changes nothing.
            mote = os.path.join(work, "mote-binary")
            shutil.copy2(a.mote, mote)
        for s in only:
            d = os.path.join(work, s.replace("/", "_"))
            if s == "mote":
                servers[s] = MoteServer(s, mote, d)
            elif s.startswith("mote/fsync="):
                servers[s] = MoteServer(s, mote, d, s.split("=", 1)[1])
            elif s == "jetstream":
                servers[s] = NatsServer(s, a.nats_server, d)
            else:
                sys.exit(f"unknown server {s}")
        fill_secs = time.monotonic() - started
        replayers = [s for s in only if s != "mote/fsync=never"]
        if "replay" in scenarios or "replay0" in scenarios:
            for s in replayers:
                res["fill"][s] = fill(servers[s], a)
                print(f"fill {s} {json.dumps(res['fill'][s])}", file=sys.stderr)
        fill_secs = time.monotonic() - started
        for i in range(a.rounds):
            spent = time.monotonic() - started
            if i and spent + (spent - fill_secs) / i > a.budget:
                res["cut"] = f"stopped after {i} of {a.rounds} rounds: another would pass --budget {a.budget:g} s"
                print(res["cut"], file=sys.stderr)
                break
            order = only if i % 2 == 0 else only[::-1]
            r = {s: {} for s in only}
            for scen in scenarios:
                for s in order:
                    if scen in ("replay", "replay0") and s not in replayers:
                        continue
                    for attempt in range(a.retries + 1):
                        srv, tag = servers[s], f"r{i}" + (f"x{attempt}" if attempt else "")
                        noise = Foreign(list(servers.values()))
                        if scen == "append":
                            m = run_append(srv, tag, a)
                        elif scen in ("replay", "replay0"):
                            m = run_replay(srv, f"{scen}-{tag}", a, scen == "replay")
                        else:
                            m = run_group(srv, tag, a, ctx)
                        m.update(noise.stop(), attempts=attempt + 1)
                        print(f"round {i + 1} {s} {scen} {json.dumps(m)}", file=sys.stderr)
                        # Disk writes count only with some foreign CPU: a server's own fsyncs also write
                        # the file system's journal, which its write_bytes does not show.
                        m["busy"] = (m["foreign_cpu"] > a.max_foreign
                                     or (m["foreign_disk_mb"] > a.max_foreign_mb and m["foreign_cpu"] > 0.03))
                        if not m["busy"]:
                            break
                        if attempt < a.retries:
                            print(f"  busy machine (other processes: {m['foreign_cpu']:.0%} CPU, "
                                  f"{m['foreign_disk_mb']:.0f} MB written); again in {a.retry_wait:g} s",
                                  file=sys.stderr)
                            time.sleep(a.retry_wait)
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
