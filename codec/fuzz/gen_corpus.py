#!/usr/bin/env python3
"""Writes the seed corpus of the `decode` fuzz target: one valid MQTT packet per file.

The packets are built here by hand from the MQTT 3.1.1 and 5.0 specs, independently of
mote-codec. Run from anywhere: `python3 codec/fuzz/gen_corpus.py`. It rewrites
`corpus/decode/` next to this script (files it did not write are left alone).
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "decode")


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def u16(n):
    return struct.pack(">H", n)


def u32(n):
    return struct.pack(">I", n)


def s(text):
    data = text.encode() if isinstance(text, str) else text
    return u16(len(data)) + data


def frame(first, body):
    return bytes([first]) + varint(len(body)) + body


def props(*items):
    """A v5 property block: `items` are already-encoded (id + value) properties."""
    block = b"".join(items)
    return varint(len(block)) + block


# Single properties: identifier byte + value.
def p_byte(pid, v):
    return bytes([pid, v])


def p_u16(pid, v):
    return bytes([pid]) + u16(v)


def p_u32(pid, v):
    return bytes([pid]) + u32(v)


def p_str(pid, v):
    return bytes([pid]) + s(v)


def p_var(pid, v):
    return bytes([pid]) + varint(v)


def p_user(k, v):
    return bytes([0x26]) + s(k) + s(v)


NO_PROPS = props()


def connect(name, level, flags, keep_alive, props_block, payload):
    body = s(name) + bytes([level, flags]) + u16(keep_alive) + props_block + payload
    return frame(0x10, body)


SEEDS = {}

# ---- MQTT 3.1.1 (and 3.1) ----------------------------------------------------------
# CONNECT: clean session, will (QoS 1, retain), username and password.
SEEDS["v4-connect-full"] = connect(
    "MQTT", 4, 0b1110_1110, 60, b"",
    s("device-0007") + s("fleet/site-42/device-0007/status") + s(b"offline")
    + s("fleet-user") + s(b"s3cret"),
)
SEEDS["v4-connect-minimal"] = connect("MQTT", 4, 0b0000_0010, 0, b"", s(""))
SEEDS["v31-connect"] = connect("MQIsdp", 3, 0b1100_0010, 30, b"", s("old-client") + s("u") + s(b"p"))
SEEDS["v4-connack"] = frame(0x20, bytes([1, 0]))
SEEDS["v4-publish-qos0"] = frame(0x30, s("t/1") + b"hello")
SEEDS["v4-publish-qos1-retain"] = frame(0x33, s("fleet/site-42/device-0007/sensor/temperature") + u16(10) + bytes(range(16)))
SEEDS["v4-publish-qos2-dup"] = frame(0x3C, s("a/b") + u16(65535) + b"")
SEEDS["v4-puback"] = frame(0x40, u16(1))
SEEDS["v4-pubrec"] = frame(0x50, u16(2))
SEEDS["v4-pubrel"] = frame(0x62, u16(3))
SEEDS["v4-pubcomp"] = frame(0x70, u16(4))
SEEDS["v4-subscribe"] = frame(0x82, u16(5) + s("a/+/c") + b"\x01" + s("#") + b"\x02" + s("$share/g/x/#") + b"\x00")
SEEDS["v4-suback"] = frame(0x90, u16(5) + bytes([0, 1, 2, 0x80]))
SEEDS["v4-unsubscribe"] = frame(0xA2, u16(6) + s("a/+/c") + s("#"))
SEEDS["v4-unsuback"] = frame(0xB0, u16(6))
SEEDS["v4-pingreq"] = frame(0xC0, b"")
SEEDS["v4-pingresp"] = frame(0xD0, b"")
SEEDS["v4-disconnect"] = frame(0xE0, b"")
# Two frames back to back: the target decodes every frame of its input.
SEEDS["v4-publish-then-puback"] = frame(0x32, s("x") + u16(7) + b"!") + frame(0x40, u16(7))

# ---- MQTT 5.0 -----------------------------------------------------------------------
SEEDS["v5-connect-full"] = connect(
    "MQTT", 5, 0b1001_0110, 120,
    props(p_u32(0x11, 3600), p_u16(0x21, 20), p_u32(0x27, 65536), p_u16(0x22, 10),
          p_byte(0x19, 1), p_byte(0x17, 0), p_user("k", "v"), p_str(0x15, "SCRAM"),
          p_str(0x16, b"\x00\x01")),
    s("device-0008")
    + props(p_u32(0x18, 5), p_byte(0x01, 1), p_u32(0x02, 60), p_str(0x03, "text/plain"),
            p_str(0x08, "reply/here"), p_str(0x09, b"corr"), p_user("a", "b"))
    + s("status/device-0008") + s(b"gone") + s("user"),
)
SEEDS["v5-connect-minimal"] = connect("MQTT", 5, 0b0000_0010, 0, NO_PROPS, s(""))
SEEDS["v5-connack"] = frame(
    0x20,
    bytes([0, 0])
    + props(p_u32(0x11, 0), p_u16(0x21, 100), p_byte(0x24, 1), p_byte(0x25, 1), p_u32(0x27, 1 << 20),
            p_str(0x12, "auto-1"), p_u16(0x22, 16), p_str(0x1F, "ok"), p_user("srv", "mote"),
            p_byte(0x28, 1), p_byte(0x29, 1), p_byte(0x2A, 0), p_u16(0x13, 30),
            p_str(0x1A, "info"), p_str(0x1C, "other:1883")),
)
SEEDS["v5-connack-refused"] = frame(0x20, bytes([0, 0x87]) + NO_PROPS)
SEEDS["v5-publish-props"] = frame(
    0x32,
    s("fleet/site-42/device-0007/sensor/temperature") + u16(10)
    + props(p_byte(0x01, 1), p_u32(0x02, 30), p_u16(0x23, 3), p_str(0x08, "r/t"), p_str(0x09, b"id-1"),
            p_user("a", "1"), p_user("a", "2"), p_var(0x0B, 7), p_var(0x0B, 300000),
            p_str(0x03, "application/json"))
    + b'{"t":21.5}',
)
SEEDS["v5-publish-aliased"] = frame(0x30, s("") + props(p_u16(0x23, 3)) + b"21.5")
SEEDS["v5-publish-plain"] = frame(0x30, s("t/1") + NO_PROPS + bytes(range(16)))
SEEDS["v5-puback-reason"] = frame(0x40, u16(1) + bytes([0x10]) + props(p_str(0x1F, "no subscribers")))
SEEDS["v5-pubrec-short"] = frame(0x50, u16(2) + bytes([0x80]))
SEEDS["v5-pubrel-reason"] = frame(0x62, u16(3) + bytes([0x92]) + NO_PROPS)
SEEDS["v5-pubcomp"] = frame(0x70, u16(4))
SEEDS["v5-subscribe"] = frame(
    0x82,
    u16(5) + props(p_var(0x0B, 42), p_user("k", "v"))
    + s("a/+/c") + bytes([0b0010_1101]) + s("$share/grp/#") + bytes([0b0001_0010]),
)
SEEDS["v5-suback"] = frame(0x90, u16(5) + props(p_str(0x1F, "partial")) + bytes([0x01, 0x02, 0x87, 0x9E]))
SEEDS["v5-unsubscribe"] = frame(0xA2, u16(6) + props(p_user("k", "v")) + s("a/+/c") + s("#"))
SEEDS["v5-unsuback"] = frame(0xB0, u16(6) + NO_PROPS + bytes([0x00, 0x11]))
SEEDS["v5-disconnect"] = frame(0xE0, bytes([0x04]) + props(p_u32(0x11, 0), p_str(0x1F, "bye"), p_str(0x1C, "elsewhere")))
SEEDS["v5-auth"] = frame(0xF0, bytes([0x18]) + props(p_str(0x15, "SCRAM-SHA-1"), p_str(0x16, b"\x01\x02\x03")))


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in sorted(SEEDS.items()):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(SEEDS)} seeds to {OUT}")


if __name__ == "__main__":
    main()
