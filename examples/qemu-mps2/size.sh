#!/usr/bin/env bash
# Flash and RAM of the firmware, and mote-client's share of them.
#
#   bash examples/qemu-mps2/size.sh
#
# Builds the firmware twice with the default settings (release profile, opt-level "s",
# fat LTO): as it is, and with `--no-default-features` (the baseline: the same boot,
# LAN9118, DHCP and TCP connect, no MQTT). Prints `.text` (vector table + code +
# read-only data, as `size` counts it), `.data` and `.bss` of both and the difference,
# then the client's statics. Needs arm-none-eabi-size and arm-none-eabi-nm
# (`apt-get install binutils-arm-none-eabi`).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for tool in arm-none-eabi-size arm-none-eabi-nm; do
    command -v "$tool" >/dev/null || { echo "size: missing $tool (apt-get install binutils-arm-none-eabi)" >&2; exit 2; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$here"
unset MOTE_BROKER_PORT MOTE_EVENTS
elf=target/thumbv7m-none-eabi/release/mote-qemu-mps2
cargo build --release --quiet --no-default-features
cp "$elf" "$work/baseline"
cargo build --release --quiet
cp "$elf" "$work/client"

python3 - "$work/baseline" "$work/client" <<'EOF'
import subprocess, sys

def sections(path):
    out = subprocess.run(["arm-none-eabi-size", "-A", path], capture_output=True, text=True, check=True).stdout
    s = {}
    for line in out.splitlines()[2:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            s[parts[0]] = int(parts[1])
    return s

def summary(s):
    return {
        "text": s.get(".vector_table", 0) + s.get(".text", 0) + s.get(".rodata", 0),
        "  code": s.get(".text", 0),
        "  rodata": s.get(".rodata", 0),
        "  vectors": s.get(".vector_table", 0),
        "data": s.get(".data", 0),
        "bss": s.get(".bss", 0) + s.get(".uninit", 0),
    }

base, full = summary(sections(sys.argv[1])), summary(sections(sys.argv[2]))
print(f"{'':10} {'baseline':>9} {'firmware':>9} {'client':>9}")
for k in base:
    print(f"{k:10} {base[k]:9,} {full[k]:9,} {full[k] - base[k]:+9,}")

def statics(path):
    nm = subprocess.run(["arm-none-eabi-nm", "-C", "-S", path], capture_output=True, text=True, check=True).stdout
    for line in nm.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[2] in "bBdD":
            yield parts[3], int(parts[1], 16)

print("\nthe client's RAM (.bss):")
for name, size in statics(sys.argv[2]):
    if "mqtt::session" in name:
        print(f"  {size:6,}  {name}")
main_task = "mote_qemu_mps2::__embassy_main::POOL"
before = dict(statics(sys.argv[1])).get(main_task, 0)
after = dict(statics(sys.argv[2])).get(main_task, 0)
print(f"  {after - before:+6,}  main task future ({before:,} -> {after:,}: the runner's, the")
print("          publishing loop's and the connector's state; the socket buffers are in both)")
EOF
