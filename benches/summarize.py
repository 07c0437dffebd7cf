#!/usr/bin/env python3
"""Prints the median-time tables of RESULTS.md from criterion's output of `--bench codec`.

Usage: python3 benches/summarize.py [CRITERION_DIR]
(default: $CARGO_TARGET_DIR/criterion, else target/criterion). Ratio = mqttbytes / mote:
how many times mote's throughput is mqttbytes'. "Net of floor" subtracts the decode
harness's own time (function `floor`: same setup and batching, reading one byte) from both.
"""
import json
import os
import sys

CASES = ["publish_16B_short", "publish_16B_5level", "publish_1KiB_short", "publish_1KiB_5level", "connect"]
VERSIONS = ["v4", "v5"]


def median_ns(root, group, function, version):
    path = os.path.join(root, group, function, version, "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"]


def fmt(ns):
    return f"{ns:.1f} ns" if ns < 1000 else f"{ns / 1000:.2f} µs"


def main():
    default = os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")
    root = sys.argv[1] if len(sys.argv) > 1 else default

    print("### Decode (median)\n")
    print("| case | version | mote | mqttbytes | mqttbytes / mote | harness floor "
          "| ratio net of floor |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for case in CASES:
        for v in VERSIONS:
            mote = median_ns(root, f"decode_{case}", "mote", v)
            theirs = median_ns(root, f"decode_{case}", "mqttbytes", v)
            floor = median_ns(root, f"decode_{case}", "floor", v)
            net = (theirs - floor) / (mote - floor)
            print(f"| {case} | {v} | {fmt(mote)} | {fmt(theirs)} | {theirs / mote:.2f}x "
                  f"| {fmt(floor)} | {net:.2f}x |")

    print("\n### Encode (median)\n")
    print("| case | version | mote `[u8; 2048]` | mote `BytesMut` | mqttbytes `BytesMut` "
          "| mqttbytes / mote slice | mqttbytes / mote BytesMut |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for case in CASES:
        for v in VERSIONS:
            sl = median_ns(root, f"encode_{case}", "mote_slice", v)
            bm = median_ns(root, f"encode_{case}", "mote_bytesmut", v)
            theirs = median_ns(root, f"encode_{case}", "mqttbytes", v)
            print(f"| {case} | {v} | {fmt(sl)} | {fmt(bm)} | {fmt(theirs)} "
                  f"| {theirs / sl:.2f}x | {theirs / bm:.2f}x |")


if __name__ == "__main__":
    main()
