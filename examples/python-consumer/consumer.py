#!/usr/bin/env python3
"""Mote event consumer: subscribe to SensorEvents over MQTT 5 and emit one JSON line each.

    python3 examples/python-consumer/consumer.py --port 1883

A web backend in miniature: it subscribes (paho-mqtt 2.x, MQTT 5) to the devices' event
topics, decodes each payload -- a postcard-encoded ``SensorEvent``, byte layout in
``docs/sensor-event.md`` -- with the small decoder below (no postcard library), and writes
one JSON object per event to stdout or to ``--out FILE``:

    {"topic": "mote/qemu/events", "device": 385, "seq": 0, "timestamp_ms": 1,
     "channel": 0, "kind": "F32", "value": 20.0, "qos": 1, "received_ms": 1764126893783}

Messages whose MQTT 5 Content Type is set to anything but ``application/x-mote-event``
are skipped; messages without one (MQTT 3.1.1 devices) are decoded by topic. A payload
that does not decode is reported on stderr and skipped.

Exit status: 0 when ``--count`` events arrived (or, without ``--count``, on Ctrl-C or at
``--timeout``); 1 when ``--timeout`` passed before ``--count`` events; 2 on a usage error
or a refused subscription.

The decoder (``decode_event``) needs only the standard library; paho-mqtt is imported when
the consumer runs, so ``test_decode.py`` runs without it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import threading
import time

CONTENT_TYPE = "application/x-mote-event"
"""MQTT 5 Content Type of a postcard-encoded SensorEvent."""

KINDS = ("Bool", "I32", "U32", "F32", "I64")
"""Value variants by tag (the variant index); new ones are only ever appended."""

MAX_ENCODED_LEN = 34
"""The largest encoding of an event (``SensorEvent::MAX_ENCODED_LEN``)."""


class DecodeError(ValueError):
    """The bytes are not exactly one SensorEvent."""


def _varint(data: bytes, pos: int, bits: int, what: str) -> tuple[int, int]:
    """Reads an unsigned LEB128 varint of a ``bits``-bit integer at ``pos``.

    As postcard does: at most ceil(bits / 7) bytes, and the value must fit the type
    (redundant continuation bytes such as ``80 00`` are accepted, as postcard does).
    Returns ``(value, next position)``.
    """
    max_bytes = (bits + 6) // 7
    value = 0
    for i in range(max_bytes):
        if pos >= len(data):
            raise DecodeError(f"{what}: truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if value >> bits:
                raise DecodeError(f"{what}: varint overflows u{bits}")
            return value, pos
    raise DecodeError(f"{what}: varint longer than {max_bytes} bytes")


def _unzigzag(u: int) -> int:
    return (u >> 1) ^ -(u & 1)


def _f32(raw: bytes) -> float:
    """The binary32 value as the shortest decimal that reads back as the same binary32
    (``0.1f32`` becomes ``0.1``, not ``0.10000000149011612``)."""
    (x,) = struct.unpack("<f", raw)
    if not math.isfinite(x):
        return x
    for digits in range(1, 10):
        y = float(f"{x:.{digits}g}")
        try:
            if struct.pack("<f", y) == raw:
                return y
        except OverflowError:  # rounded past the largest binary32
            continue
    return x  # 9 significant digits always round-trip; not reached


def decode_event(data: bytes) -> dict:
    """Decodes exactly one postcard-encoded SensorEvent.

    Returns ``{"device", "seq", "timestamp_ms", "channel", "kind", "value"}``: integers,
    ``kind`` one of :data:`KINDS`, ``value`` a bool, int or float.

    Raises :class:`DecodeError` on truncated input, trailing bytes, an over-long or
    overflowing varint, a bool byte other than 0/1, or an unknown value tag.
    """
    data = bytes(data)
    device, i = _varint(data, 0, 32, "device")
    seq, i = _varint(data, i, 32, "seq")
    timestamp_ms, i = _varint(data, i, 64, "timestamp_ms")
    channel, i = _varint(data, i, 16, "channel")
    tag, i = _varint(data, i, 32, "value tag")
    if tag == 0:
        if i >= len(data):
            raise DecodeError("Bool: truncated")
        if data[i] > 1:
            raise DecodeError(f"Bool: invalid byte 0x{data[i]:02x}")
        value, i = data[i] == 1, i + 1
    elif tag == 1:
        u, i = _varint(data, i, 32, "I32")
        value = _unzigzag(u)
    elif tag == 2:
        value, i = _varint(data, i, 32, "U32")
    elif tag == 3:
        if len(data) - i < 4:
            raise DecodeError("F32: truncated")
        value, i = _f32(data[i : i + 4]), i + 4
    elif tag == 4:
        u, i = _varint(data, i, 64, "I64")
        value = _unzigzag(u)
    else:
        raise DecodeError(f"unknown value tag {tag}")
    if i != len(data):
        raise DecodeError(f"{len(data) - i} trailing byte(s)")
    return {
        "device": device,
        "seq": seq,
        "timestamp_ms": timestamp_ms,
        "channel": channel,
        "kind": KINDS[tag],
        "value": value,
    }


def json_value(value):
    """JSON has no NaN or infinities: those F32 values become the strings "NaN",
    "Infinity" and "-Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def to_json_line(event: dict, **extra) -> str:
    """One compact JSON object (no newline): the event's fields, then ``extra``."""
    record = dict(event)
    record["value"] = json_value(record["value"])
    record.update(extra)
    return json.dumps(record, separators=(", ", ": "), allow_nan=False)


# ---- the consumer ------------------------------------------------------------------------


def _log(*parts) -> None:
    print("consumer:", *parts, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Subscribe to Mote SensorEvents (MQTT 5) and print each as one JSON line.",
    )
    p.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    p.add_argument(
        "--topic",
        action="append",
        help="topic filter, repeatable (default: mote/events/# and mote/qemu/#)",
    )
    p.add_argument("--qos", type=int, choices=(0, 1, 2), default=1, help="subscription QoS (default 1)")
    p.add_argument("--client-id", default=f"mote-consumer-{os.getpid()}", help="MQTT client id")
    p.add_argument(
        "--session-expiry",
        type=int,
        default=0,
        metavar="S",
        help="keep the session S seconds after a disconnect (clean start 0; use a fixed "
        "--client-id), so events published while the consumer is down are delivered later",
    )
    p.add_argument("--count", type=int, metavar="N", help="exit (status 0) after N events")
    p.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="stop after S seconds (status 1 if --count events have not arrived by then)",
    )
    p.add_argument("--out", metavar="FILE", help="append the JSON lines to FILE instead of stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    if args.count is not None and args.count < 1:
        p.error("--count must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        p.error("--timeout must be positive")
    if not args.topic:
        args.topic = ["mote/events/#", "mote/qemu/#"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
    except ImportError:
        _log("needs paho-mqtt 2.x: pip install 'paho-mqtt>=2,<3'")
        return 2

    out = open(args.out, "a", buffering=1, encoding="utf-8") if args.out else sys.stdout
    done = threading.Event()
    lock = threading.Lock()
    stats = {"events": 0, "undecodable": 0, "skipped": 0, "refused": False}
    started = time.monotonic()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        protocol=mqtt.MQTTv5,
    )
    client.reconnect_delay_set(min_delay=1, max_delay=10)

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            _log(f"connect refused: {reason_code}")
            return
        if not args.quiet:
            _log(f"connected to {args.host}:{args.port} (session present {int(flags.session_present)})")
        client.subscribe([(t, args.qos) for t in args.topic])

    def on_subscribe(client, userdata, mid, reason_code_list, properties):
        failed = [str(rc) for rc in reason_code_list if rc.is_failure]
        if failed:
            _log(f"subscription refused: {', '.join(failed)}")
            stats["refused"] = True
            done.set()
        elif not args.quiet:
            _log(f"subscribed to {', '.join(args.topic)}")

    def on_disconnect(client, userdata, flags, reason_code, properties):
        if not done.is_set() and not args.quiet:
            _log(f"disconnected ({reason_code}); reconnecting")

    def on_connect_fail(client, userdata):
        if not args.quiet:
            _log(f"cannot connect to {args.host}:{args.port}; retrying")

    def on_message(client, userdata, msg):
        content_type = getattr(msg.properties, "ContentType", None)
        if content_type is not None and content_type != CONTENT_TYPE:
            with lock:
                stats["skipped"] += 1
            return
        received_ms = time.time_ns() // 1_000_000
        try:
            event = decode_event(msg.payload)
        except DecodeError as e:
            with lock:
                stats["undecodable"] += 1
            _log(f"undecodable payload on {msg.topic}: {msg.payload.hex()} ({e})")
            return
        line = to_json_line(event, topic=msg.topic, qos=msg.qos, received_ms=received_ms)
        with lock:
            if done.is_set():
                return  # past --count: not ours to report
            out.write(line + "\n")
            out.flush()
            stats["events"] += 1
            if args.count is not None and stats["events"] >= args.count:
                done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_disconnect = on_disconnect
    client.on_connect_fail = on_connect_fail
    client.on_message = on_message

    properties = None
    clean_start = True
    if args.session_expiry > 0:
        clean_start = False
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = args.session_expiry

    client.connect_async(args.host, args.port, keepalive=30, clean_start=clean_start, properties=properties)
    client.loop_start()
    status = 0
    try:
        if not done.wait(args.timeout):
            if args.count is not None:
                status = 1
                _log(f"timeout after {args.timeout} s: {stats['events']}/{args.count} events")
    except KeyboardInterrupt:
        pass
    finally:
        done.set()
        client.disconnect()
        client.loop_stop()
        if out is not sys.stdout:
            out.close()
    if stats["refused"]:
        status = 2
    if not args.quiet:
        _log(
            f"{stats['events']} events, {stats['undecodable']} undecodable, "
            f"{stats['skipped']} skipped (other content type) in {time.monotonic() - started:.2f} s"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
