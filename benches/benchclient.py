"""The pieces the Python benchmarks share: lean clients on raw asyncio sockets (MQTT 5,
the NATS text protocol, AMQP 0-9-1; only what the scenarios use), the windowed producer,
the consumer processes and how their results are tallied, the servers that run as child
processes (Mote, nats-server), the estimate of what other processes did to the machine,
the round loop with its repetitions on a busy machine, and the report's tables (medians,
min-max, ratios).

Used by streams_bench.py and queues_bench.py (and, through streams_bench.py, by
stream_backlog_bench.py); it runs nothing by itself.
"""

import asyncio
import datetime
import hashlib
import json
import os
import platform
import re
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
MOTE_CONFIG = "[mqtt]\nmax_inflight = 1024\nreceive_maximum = 1024\n"
SEQ = struct.Struct(">QQ")  # payload: sequence number, send time (ns), then padding


def clock_ns():
    """The clock every process of a run stamps with and reads: CLOCK_MONOTONIC, one clock
    for the whole machine on Linux, which no step of the wall clock moves. The wall clock
    was once seen moving 5 ms a second against it here, which put up to 75 ms of error
    into a 15 s run's latencies (every server alike)."""
    return time.monotonic_ns()


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

    def __init__(self, name, exe, work, fsync=None, config=None):
        self.name, self.work = name, work
        os.makedirs(work)
        cfg = os.path.join(work, "mote.toml")
        with open(cfg, "w") as f:
            f.write(MOTE_CONFIG if config is None else config)
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


def written(srv):
    return srv.written() if hasattr(srv, "written") else proc_written_bytes(srv.proc.pid)


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
    return (total + v[5] + v[6]) / CLK_TCK


class Foreign:
    """What other processes did to the machine during a measurement: the CPU that neither
    the servers nor the load generator used, as a fraction of the machine, and the bytes
    written to disk that the servers did not write (both estimates).

    without_kernel: the kernel's own threads and interrupts are left out of the "other" CPU
    (and reported apart as kernel_cpu): a server's many fsyncs alone keep them busy for a
    few % of the machine (RabbitMQ's write ~100 MB of file-system journal that its VM's
    write_bytes do not show). A server's disk writes are its `written()` where it has one
    (RabbitMQ: its VM rather than its start script), else its process's."""

    def __init__(self, servers, without_kernel=False):
        self.servers, self.without_kernel = servers, without_kernel
        os.sync()  # start from clean page cache, so that older writes are not counted
        self.busy0, self.total0 = machine_cpu_secs()
        self.cpu0 = sum(s.cpu() for s in servers)
        self.disk0 = disk_written_bytes()
        self.w0 = sum(written(s) for s in servers)
        self.mine0 = self_and_children_cpu_secs()
        self.kernel0 = kernel_cpu_secs() if without_kernel else 0.0

    def stop(self):
        busy, total = machine_cpu_secs()
        cpu = sum(s.cpu() for s in self.servers) - self.cpu0
        kernel = kernel_cpu_secs() - self.kernel0 if self.without_kernel else 0.0
        other = (busy - self.busy0) - cpu - (self_and_children_cpu_secs() - self.mine0) - kernel
        mine = sum(written(s) for s in self.servers) - self.w0
        disk = (disk_written_bytes() - self.disk0) - mine
        span = max(total - self.total0, 1e-9)
        out = {"foreign_cpu": round(max(other, 0.0) / span, 4)}
        if self.without_kernel:
            out["kernel_cpu"] = round(kernel / span, 4)
        out["foreign_disk_mb"] = round(max(disk, 0) / 1e6, 1)
        return out


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


async def js_admin(addr, fn):
    import nats
    nc = await nats.connect(f"nats://{addr[0]}:{addr[1]}", connect_timeout=10)
    try:
        return await fn(nc.jetstream())
    finally:
        await nc.close()


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
# Publishing (enqueueing) with a window, optionally at a fixed rate


async def produce(kind, addr, topics, n, window, size, lat_ns=None, rate=None, client_id="bench-pub",
                  timeout=120.0, track=False):
    """Publishes n messages (message i to topics[i % len(topics)], carrying i and its send
    time) keeping `window` unacknowledged, at most `rate` per second when given; returns
    counts and times. kind: "mqtt" (QoS 1 PUBLISH, the PUBACK), "nats" (PUB with a reply
    subject, the PubAck) or "amqp" (persistent basic.publish to the default exchange, on a
    channel in confirm mode; topics are queue names). `lat_ns`: a list to append the
    acknowledgement latencies to. track: also return which messages were acknowledged
    ("acked_bits", one byte each)."""
    pad = b"p" * (size - SEQ.size)
    sent_ns = [0] * (65536 if kind == "mqtt" else n)
    acked_bits = bytearray(n) if track else None
    st = {"acked": 0, "failed": 0, "errors": []}
    if kind == "mqtt":
        c = await Mqtt.connect(addr, client_id)
        window = min(window, c.server_receive_max)
        prefixes = [mqtt_publish_packet_prefix(t, size) for t in topics]
        pid_seq = [0] * 65536 if track else None
    elif kind == "nats":
        c = await Nats.connect(addr)
        inbox = b"_INBOX." + os.urandom(8).hex().encode()
        c.w.write(b"SUB " + inbox + b".* 1\r\n")
        heads = [(b"PUB " + t.encode() + b" " + inbox + b".") for t in topics]
        tail = b" %d\r\n" % size
    else:
        c = await Amqp.connect(addr, confirm=True)
        prefixes = [amqp_publish_prefix(t, size) for t in topics]
        low = 0  # every message below it is settled (AMQP confirms may be `multiple`)
    inflight = 0
    progress = asyncio.Event()
    done = asyncio.get_running_loop().create_future()

    def settle(seq, ok, now, why=None):
        nonlocal inflight
        if ok:
            st["acked"] += 1
            if track:
                acked_bits[seq] = 1
        else:
            st["failed"] += 1
            if why and len(st["errors"]) < 3:
                st["errors"].append(why)
        if lat_ns is not None:
            lat_ns.append(now - sent_ns[seq])
        inflight -= 1

    async def read_acks():
        nonlocal inflight, low
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
                        pid = (buf[s] << 8) | buf[s + 1]
                        if e - s > 2 and buf[s + 2] >= 0x80:
                            st["failed"] += 1
                            if len(st["errors"]) < 3:
                                st["errors"].append(f"PUBACK 0x{buf[s + 2]:02x}")
                        else:
                            st["acked"] += 1
                            if track:
                                acked_bits[pid_seq[pid]] = 1
                        if lat_ns is not None:
                            lat_ns.append(now - sent_ns[pid])
                        inflight -= 1
                elif kind == "nats":
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
                            if track:
                                acked_bits[seq] = 1
                        if lat_ns is not None:
                            lat_ns.append(now - sent_ns[seq])
                        inflight -= 1
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
    wall0 = clock_ns() - t0
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
                due = int((now - t0) * rate / 1e9) + 1  # messages due by now
                if due <= seq:
                    await asyncio.sleep(max(0.0002, (seq + 1) / rate - (now - t0) / 1e9))
                    continue
                k = min(k, due - seq)
            wall = wall0 + now
            parts = []
            if kind == "mqtt":
                for s in range(seq, seq + k):
                    pid = pid % 65535 + 1
                    sent_ns[pid] = now
                    if track:
                        pid_seq[pid] = s
                    parts.append(prefixes[s % len(prefixes)] + pid.to_bytes(2, "big") + b"\x00"
                                 + SEQ.pack(s, wall) + pad)
            elif kind == "nats":
                for s in range(seq, seq + k):
                    sent_ns[s] = now
                    parts.append(heads[s % len(heads)] + b"%d" % s + tail + SEQ.pack(s, wall) + pad + b"\r\n")
            else:
                for s in range(seq, seq + k):
                    sent_ns[s] = now
                    parts.append(prefixes[s % len(prefixes)] + SEQ.pack(s, wall) + pad + FRAME_END)
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
    out = {"sent": seq, "acked": st["acked"], "failed": st["failed"], "unacked": seq - st["acked"] - st["failed"],
           "lost": n - st["acked"], "secs": (t1 - t0) / 1e9, "errors": st["errors"]}
    if track:
        out["acked_bits"] = acked_bits
    return out



def pct(sorted_xs, q):
    return sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))] if sorted_xs else float("nan")


# ---------------------------------------------------------------------------------------
# Reading: a reader or one competing consumer (MQTT 5, a JetStream pull consumer)


class Seen:
    """Which sequence numbers arrived, how many twice, and end-to-end latencies."""

    def __init__(self, n, latency=False):
        self.bits = bytearray(n)
        self.unique = self.dups = self.foreign = 0
        self.lat_ns = [] if latency else None
        self.first = self.last = 0
        self.last_new = 0  # wall time of the last chunk that brought a message not seen before
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
                    on_chunk=None, idle=5.0, go=None, poll=0.2):
    """Reads until `seen` has n messages, `stop()` is true, or nothing came for `idle` s.
    `go()` is called once connected, before the SUBSCRIBE; `ready()` after the SUBACK; an
    acknowledgement (PUBACK) per QoS 1 message, in one write per chunk read."""
    c = await Mqtt.connect(addr, client_id, receive_max=receive_max)
    props = [("stream-offset", start)] if start else []
    try:
        if go:
            go()
        await c.subscribe(topic_filter, qos, props)
        if ready:
            ready()
        quiet_since = time.monotonic()
        while seen.unique < n and not stop():
            got = await c.next(poll)
            if got is None:
                if time.monotonic() - quiet_since > idle:
                    break
                continue
            buf, packets = got
            now = clock_ns()
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
                pl, i = read_varint(buf, i)  # properties (mote-offset, mote-id...): skipped
                seen.add(buf[i + pl:e], now)
            if acks:
                c.w.write(b"".join(acks))
            seen.last = now
            if seen.unique != before:
                seen.last_new = now
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
            now = clock_ns()
            acks = []
            before = seen.unique
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
            if seen.unique != before:
                seen.last_new = now
            quiet_since = time.monotonic()
            top_up()
            if on_chunk:
                on_chunk(seen)
    finally:
        c.close()



# ---------------------------------------------------------------------------------------
# Competing consumers, one process each


def member_main(reader, args, name, n, latency, ready_q, go_ev, stop_ev, count, out_q):
    """One consumer in a process of its own: `reader(*args, name=, seen=, go=, stop=,
    on_chunk=)` (a module-level coroutine function) connects, calls go() (which says ready
    and, when gated, waits for the go), then reads and acknowledges until told to stop."""
    seen = Seen(n, latency)
    cpu0 = self_cpu_secs()
    error = None

    def go():
        ready_q.put(name)
        if go_ev is not None:
            go_ev.wait()

    def on_chunk(s):
        count.value = s.unique + s.dups
    try:
        asyncio.run(reader(*args, name=name, seen=seen, go=go, stop=stop_ev.is_set, on_chunk=on_chunk))
    except Exception as e:  # noqa: BLE001 (reported)
        error = repr(e)
        ready_q.put(name)
    out_q.put({"name": name, "bits": bytes(seen.bits), "dups": seen.dups, "foreign": seen.foreign,
               "sample": seen.sample, "lat_ns": seen.lat_ns, "last": seen.last_new or seen.last,
               "cpu": self_cpu_secs() - cpu0, "error": error})


class Members:
    """`count` competing consumers of one queue or group, one process each (ctx: a
    multiprocessing context). names[i] and args[i] are member i's name and its reader's
    arguments; n the sequence numbers to expect; gated: they wait for go() after saying
    ready, else they read as soon as they are."""

    def __init__(self, ctx, reader, names, args, n, latency=False, gated=False, ready_timeout=60):
        self.ready_q, self.out_q, self.stop_ev = ctx.Queue(), ctx.Queue(), ctx.Event()
        self.go_ev = ctx.Event() if gated else None
        self.counts = [ctx.Value("q", 0, lock=False) for _ in names]
        self.procs = [ctx.Process(target=member_main, args=(reader, args[i], name, n, latency, self.ready_q,
                                                            self.go_ev, self.stop_ev, self.counts[i], self.out_q))
                      for i, name in enumerate(names)]
        try:
            for p in self.procs:
                p.start()
            for _ in self.procs:
                self.ready_q.get(timeout=ready_timeout)
        except BaseException:
            self.reap()
            raise

    def go(self):
        t0 = clock_ns()
        if self.go_ev is not None:
            self.go_ev.set()
        return t0

    def wait(self, expected, settle, until=None, poll=0.01):
        """Until the members have `expected()` deliveries, or none came for `settle` s."""
        last, last_change = -1, time.monotonic()
        while any(p.is_alive() for p in self.procs):
            total = sum(c.value for c in self.counts)
            if total >= expected() and (until is None or until()):
                break
            if total != last:
                last, last_change = total, time.monotonic()
            elif time.monotonic() - last_change > settle and (until is None or until()):
                break
            time.sleep(poll)

    def finish(self, grace=0.3):
        """Stops them (after `grace` s, to see late duplicates) and returns their results."""
        time.sleep(grace)
        self.stop_ev.set()
        if self.go_ev is not None:
            self.go_ev.set()
        try:
            return [self.out_q.get(timeout=30) for _ in self.procs]
        finally:
            self.reap()

    def reap(self):
        self.stop_ev.set()
        if self.go_ev is not None:
            self.go_ev.set()
        for p in self.procs:
            if p.pid is None:
                continue
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join()


def tally(results, acked_bits, n):
    """Exactly once: (received, lost, dups, extra) over the members; a sequence number
    received by two members counts as a duplicate. Without acked_bits, lost and extra are
    None."""
    union = bytearray(n)
    dups = sum(r["dups"] for r in results)
    for r in results:
        b = r["bits"]
        dups += sum(map(int.__and__, b, union))
        union = bytearray(map(int.__or__, union, b))
    received = sum(union)
    if acked_bits is None:
        return received, None, dups, None
    lost = sum(1 for a, u in zip(acked_bits, union) if a and not u)
    extra = sum(1 for a, u in zip(acked_bits, union) if u and not a)  # received, never acknowledged
    return received, lost, dups, extra


def consumer_problems(results):
    out = [f"{r['name']}: {r['error']}" for r in results if r["error"]]
    out += [f"{r['name']}: {r['foreign']} messages not of this run, e.g. {r['sample']!r}" for r in results
            if r["foreign"]]
    return out


# ---------------------------------------------------------------------------------------
# Rounds and the report


def span(xs, fmt):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return f"{fmt(statistics.median(xs))} ({fmt(min(xs))}–{fmt(max(xs))})" if len(xs) > 1 else fmt(xs[0])


def is_busy(m, a):
    """Whether other processes disturbed measurement m: more CPU than --max-foreign, or
    more disk writes than --max-foreign-mb with some CPU (a server's own fsyncs also write
    the file system's journal, which its write_bytes do not show)."""
    return (m["foreign_cpu"] > a.max_foreign
            or (m["foreign_disk_mb"] > a.max_foreign_mb and m["foreign_cpu"] > 0.03))


def run_rounds(a, servers, scenarios, started, setup_secs, measure, res, noise=Foreign, prepare=None, skip=None,
               busy_in_log=False, retries_within_budget=False):
    """--rounds rounds, the servers (res["systems"]) in alternating order in each scenario:
    res["rounds"][i][server][scenario] = measure(scenario, server, srv, tag), with noise()
    of the servers around it. A measurement that other processes disturbed is repeated
    (--retries, after --retry-wait s; with retries_within_budget, not past --budget) and
    the last attempt kept, flagged "busy". No round starts once one more would pass
    --budget s (res["cut"] says so). prepare(scenario, server, srv, tag, attempt) runs
    before the noise estimate starts (unmeasured setup); skip(scenario, server) leaves a
    pair out."""
    only = res["systems"]
    for i in range(a.rounds):
        spent = time.monotonic() - started
        if i and spent + (spent - setup_secs) / i > a.budget:
            res["cut"] = f"stopped after {i} of {a.rounds} rounds: another would pass --budget {a.budget:g} s"
            print(res["cut"], file=sys.stderr)
            break
        order = only if i % 2 == 0 else only[::-1]
        r = {s: {} for s in only}
        for scen in scenarios:
            for s in order:
                if skip and skip(scen, s):
                    continue
                srv = servers[s]
                for attempt in range(a.retries + 1):
                    tag = f"r{i}" + (f"x{attempt}" if attempt else "")
                    if prepare:
                        prepare(scen, s, srv, tag, attempt)
                    est = noise(list(servers.values()))
                    m = measure(scen, s, srv, tag)
                    m.update(est.stop(), attempts=attempt + 1)
                    busy = is_busy(m, a)
                    if busy_in_log:
                        m["busy"] = busy
                    print(f"round {i + 1} {s} {scen} {json.dumps(m)}", file=sys.stderr)
                    m["busy"] = busy
                    if not busy:
                        break
                    if attempt < a.retries and (not retries_within_budget or time.monotonic() - started < a.budget):
                        print(f"  busy machine (other processes: {m['foreign_cpu']:.0%} CPU, "
                              f"{m['foreign_disk_mb']:.0f} MB written); again in {a.retry_wait:g} s",
                              file=sys.stderr)
                        time.sleep(a.retry_wait)
                    else:
                        break
                r[s][scen] = m
        res["rounds"].append(r)


def medians(res, scen, key="msgs_per_sec"):
    """{server: median of key} over the undisturbed measurements of scen (all of them when
    none was), for the servers measured in every round."""
    rows = [s for s in res["systems"] if all(r.get(s, {}).get(scen) for r in res["rounds"])]
    out = {}
    for s in rows:
        xs = [r[s][scen] for r in res["rounds"]]
        used = [x for x in xs if not x.get("busy")] or xs
        out[s] = statistics.median(x[key] for x in used)
    return out


def md_table(out, res, title, scen, cols, peers, key="msgs_per_sec", key_label="msgs/s", ratio_label="",
             summed=("lost", "dups", "left after")):
    """Appends to `out` a table of one scenario: a row per server, the median (min-max) of
    `key` over the undisturbed measurements (all of them when none was), the ratios of the
    medians to each peer's, the rounds used, then cols [(header, fn(measurements))]; the
    columns named in `summed` get every measurement (lost and dups are summed over all)."""
    systems = res["systems"]
    rows = [s for s in systems if all(r.get(s, {}).get(scen) for r in res["rounds"])]
    if not rows:
        return
    every = {s: [r[s][scen] for r in res["rounds"]] for s in rows}
    used = {s: [x for x in xs if not x.get("busy")] or xs for s, xs in every.items()}
    med = {s: statistics.median(x[key] for x in used[s]) for s in rows}
    rh = "".join(f" {ratio_label}÷ {p} |" for p in peers)
    out.extend([title, "", f"| server | {key_label} |" + rh + " rounds used | " + " | ".join(c[0] for c in cols)
                + " |", "|---|---:|" + "---:|" * len(peers) + "---:|" + "---:|" * len(cols)])
    fmt = (lambda v: f"{v:,.0f}") if key == "msgs_per_sec" else (lambda v: f"{v:.2f} ms")
    for s in rows:
        xs = used[s]
        ratios = "".join(f" **{med[s] / med[p]:.2f}×** |" if p in med and med[p] else " – |" for p in peers)
        flag = " ⚠ lossy" if any(x["lost"] for x in every[s]) else ""
        disturbed = all(x.get("busy") for x in every[s])
        n_used = f"{len(xs)} of {len(every[s])}" + (" (all disturbed)" if disturbed else "")
        out.append(f"| {s} | {span([x[key] for x in xs], fmt)}{flag} |{ratios} {n_used} | "
                   + " | ".join(c[1](every[s] if c[0] in summed else xs) for c in cols) + " |")
    out.append("")


def round_problems(res):
    """The problems the measurements reported."""
    return [f"round {i + 1} {s} {scen}: {p}" for i, r in enumerate(res["rounds"]) for s, sc in r.items()
           for scen, v in sc.items() for p in v.get("problems", [])]


def busy_problems(res):
    return [f"round {i + 1} {s} {scen}: busy machine (other processes {v['foreign_cpu']:.0%} CPU, "
            f"{v['foreign_disk_mb']:.0f} MB written)" for i, r in enumerate(res["rounds"]) for s, sc in r.items()
            for scen, v in sc.items() if v["busy"]]


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

