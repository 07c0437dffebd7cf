"""Tests of the SensorEvent decoder in consumer.py (standard library only).

    cd examples/python-consumer && python3 -m unittest -v
    python3 -m unittest discover -s examples/python-consumer -v     # from the repo root

The worked example and the value encodings are read from docs/sensor-event.md itself, so
the decoder and the document cannot drift apart unnoticed.
"""

import json
import math
import os
import random
import re
import struct
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from consumer import (  # noqa: E402
    MAX_ENCODED_LEN,
    DecodeError,
    decode_event,
    to_json_line,
)

DOC = os.path.join(HERE, "..", "..", "docs", "sensor-event.md")


# ---- a reference encoder (the postcard rules, written out independently) ---------------


def enc_varint(n: int) -> bytes:
    assert n >= 0
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def zigzag(n: int, bits: int) -> int:
    return ((n << 1) ^ (n >> (bits - 1))) & ((1 << bits) - 1)


def encode(device, seq, timestamp_ms, channel, kind, value) -> bytes:
    head = enc_varint(device) + enc_varint(seq) + enc_varint(timestamp_ms) + enc_varint(channel)
    if kind == "Bool":
        tail = b"\x00" + bytes([1 if value else 0])
    elif kind == "I32":
        tail = b"\x01" + enc_varint(zigzag(value, 32))
    elif kind == "U32":
        tail = b"\x02" + enc_varint(value)
    elif kind == "F32":
        tail = b"\x03" + struct.pack("<f", value)
    elif kind == "I64":
        tail = b"\x04" + enc_varint(zigzag(value, 64))
    else:
        raise AssertionError(kind)
    return head + tail


ZERO_HEAD = bytes([0, 0, 0, 0])  # device, seq, timestamp_ms, channel all 0


def event(device=0, seq=0, timestamp_ms=0, channel=0, kind="Bool", value=False):
    return dict(device=device, seq=seq, timestamp_ms=timestamp_ms, channel=channel, kind=kind, value=value)


class WorkedExample(unittest.TestCase):
    """The examples of docs/sensor-event.md, taken from the document."""

    @classmethod
    def setUpClass(cls):
        with open(DOC, encoding="utf-8") as f:
            cls.doc = f.read()

    def test_worked_example_from_the_doc(self):
        m = re.search(r"encodes to these (\d+) bytes.*?```\s*\n([0-9A-Fa-f ]+)\n```", self.doc, re.S)
        self.assertIsNotNone(m, "worked example not found in docs/sensor-event.md")
        data = bytes.fromhex(m.group(2))
        self.assertEqual(len(data), int(m.group(1)))
        self.assertEqual(
            decode_event(data),
            event(device=300, seq=1, timestamp_ms=1_700_000_000_000, channel=2, kind="F32", value=21.5),
        )

    def test_worked_example_literal(self):
        # The same bytes, in case the document's formatting changes.
        data = bytes.fromhex("AC02 01 80D095FFBC31 02 03 0000AC41")
        self.assertEqual(decode_event(data)["timestamp_ms"], 0x18B_CFE5_6800)

    def test_value_table_from_the_doc(self):
        rows = re.findall(r"^\| `(\w+)\(([^)]*)\)` \| `([0-9A-F ]+)`", self.doc, re.M)
        expected = {
            "Bool": ("Bool", True),
            "I32": ("I32", -2),
            "U32": ("U32", 128),
            "F32": ("F32", 1.0),
            "I64": ("I64", 64),
        }
        self.assertEqual(sorted(r[0] for r in rows), sorted(expected), rows)
        for variant, _literal, hexbytes in rows:
            with self.subTest(variant=variant):
                got = decode_event(ZERO_HEAD + bytes.fromhex(hexbytes))
                kind, value = expected[variant]
                self.assertEqual((got["kind"], got["value"]), (kind, value))
                self.assertIs(type(got["value"]), type(value))


class EdgeCases(unittest.TestCase):
    def test_largest_event_is_max_encoded_len(self):
        data = encode(2**32 - 1, 2**32 - 1, 2**64 - 1, 2**16 - 1, "I64", -(2**63))
        self.assertEqual(len(data), MAX_ENCODED_LEN)
        self.assertEqual(
            decode_event(data),
            event(2**32 - 1, 2**32 - 1, 2**64 - 1, 2**16 - 1, "I64", -(2**63)),
        )

    def test_integer_extremes(self):
        for kind, value in [
            ("I32", -(2**31)),
            ("I32", 2**31 - 1),
            ("I32", -1),
            ("I32", 0),
            ("U32", 0),
            ("U32", 2**32 - 1),
            ("I64", 2**63 - 1),
            ("I64", -(2**63)),
            ("I64", -1),
            ("Bool", False),
            ("Bool", True),
        ]:
            with self.subTest(kind=kind, value=value):
                self.assertEqual(decode_event(ZERO_HEAD + encode(0, 0, 0, 0, kind, value)[4:])["value"], value)

    def test_zigzag_bytes(self):
        self.assertEqual(decode_event(ZERO_HEAD + bytes([1, 0x01]))["value"], -1)
        self.assertEqual(decode_event(ZERO_HEAD + bytes([1, 0x02]))["value"], 1)
        self.assertEqual(decode_event(ZERO_HEAD + bytes([1, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]))["value"], -(2**31))
        self.assertEqual(decode_event(ZERO_HEAD + bytes([4, 0x7F]))["value"], -64)

    def test_f32_shortest_and_special(self):
        cases = [(0.1, 0.1), (-0.5, -0.5), (3.4028234663852886e38, 3.4028235e38), (1e-45, 1e-45)]
        for f, shown in cases:
            with self.subTest(f=f):
                got = decode_event(ZERO_HEAD + b"\x03" + struct.pack("<f", f))["value"]
                self.assertEqual(got, shown)
                self.assertEqual(struct.pack("<f", got), struct.pack("<f", f))
        neg_zero = decode_event(ZERO_HEAD + b"\x03" + struct.pack("<f", -0.0))["value"]
        self.assertEqual(math.copysign(1, neg_zero), -1)
        nan = decode_event(ZERO_HEAD + b"\x03\x00\x00\xc0\x7f")["value"]
        self.assertTrue(math.isnan(nan))
        self.assertEqual(decode_event(ZERO_HEAD + b"\x03\x00\x00\x80\xff")["value"], -math.inf)

    def test_json_line(self):
        ev = decode_event(ZERO_HEAD + b"\x03\x00\x00\xc0\x7f")
        line = to_json_line(ev, topic="t")
        self.assertEqual(json.loads(line)["value"], "NaN")
        self.assertNotIn("\n", line)
        ev = decode_event(bytes.fromhex("AC0201 80D095FFBC31 02 03 0000AC41"))
        self.assertEqual(
            json.loads(to_json_line(ev, topic="mote/qemu/events", qos=1)),
            dict(event(300, 1, 1_700_000_000_000, 2, "F32", 21.5), topic="mote/qemu/events", qos=1),
        )

    def test_non_minimal_varint_is_accepted_like_postcard(self):
        self.assertEqual(decode_event(bytes([0x80, 0x00, 0, 0, 0, 0, 1]))["device"], 0)

    def test_rejects(self):
        bad = {
            "empty": b"",
            "only the head": ZERO_HEAD,
            "truncated varint": bytes([0x80]),
            "truncated timestamp": bytes([0, 0, 0xFF, 0xFF]),
            "bool byte 2": ZERO_HEAD + bytes([0, 2]),
            "bool missing": ZERO_HEAD + bytes([0]),
            "f32 short": ZERO_HEAD + bytes([3, 0, 0, 0x80]),
            "unknown tag 5": ZERO_HEAD + bytes([5, 0]),
            "huge tag": ZERO_HEAD + bytes([0x80, 0x01, 0]),
            "trailing byte": ZERO_HEAD + bytes([0, 1, 0]),
            "u32 device 6 bytes": bytes([0x80] * 5 + [0x00, 0, 0, 0, 0, 1]),
            "u32 device overflow": bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x10, 0, 0, 0, 0, 1]),
            "u16 channel overflow": bytes([0, 0, 0, 0x80, 0x80, 0x04, 0, 1]),
            "u16 channel 4 bytes": bytes([0, 0, 0, 0x80, 0x80, 0x80, 0x00, 0, 1]),
            "u64 timestamp overflow": bytes([0, 0] + [0xFF] * 9 + [0x02, 0, 0, 1]),
            "i32 value overflow": ZERO_HEAD + bytes([1, 0xFF, 0xFF, 0xFF, 0xFF, 0x10]),
        }
        for name, data in bad.items():
            with self.subTest(name):
                with self.assertRaises(DecodeError):
                    decode_event(data)

    def test_limits_accepted(self):
        # The largest value each varint field can hold, written in its maximum length.
        data = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0, 0, 0xFF, 0xFF, 0x03, 0, 1])
        ev = decode_event(data)
        self.assertEqual((ev["device"], ev["channel"]), (2**32 - 1, 2**16 - 1))

    def test_random_round_trips(self):
        rng = random.Random(6)
        for _ in range(2000):
            kind = rng.choice(["Bool", "I32", "U32", "F32", "I64"])
            value = {
                "Bool": lambda: rng.random() < 0.5,
                "I32": lambda: rng.randint(-(2**31), 2**31 - 1),
                "U32": lambda: rng.getrandbits(rng.randint(1, 32)),
                "F32": lambda: struct.unpack("<f", struct.pack("<f", rng.uniform(-1e6, 1e6)))[0],
                "I64": lambda: rng.randint(-(2**63), 2**63 - 1) >> rng.randint(0, 63),
            }[kind]()
            fields = (
                rng.getrandbits(rng.randint(1, 32)),
                rng.getrandbits(rng.randint(1, 32)),
                rng.getrandbits(rng.randint(1, 64)),
                rng.getrandbits(rng.randint(1, 16)),
            )
            data = encode(*fields, kind, value)
            self.assertLessEqual(len(data), MAX_ENCODED_LEN)
            got = decode_event(data)
            self.assertEqual((got["device"], got["seq"], got["timestamp_ms"], got["channel"]), fields)
            self.assertEqual(got["kind"], kind)
            if kind == "F32":
                self.assertEqual(struct.pack("<f", got["value"]), struct.pack("<f", value))
            else:
                self.assertEqual(got["value"], value)
            # Every proper prefix is rejected (no event is a prefix of another).
            for cut in range(len(data)):
                with self.assertRaises(DecodeError):
                    decode_event(data[:cut])


if __name__ == "__main__":
    unittest.main()
