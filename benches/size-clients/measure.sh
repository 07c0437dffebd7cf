#!/usr/bin/env bash
# Builds the four size firmwares (baseline, mote-client, minimq, rust-mqtt) for
# thumbv7m-none-eabi and prints .text/.data/.bss of each and each client's share (the
# difference to the baseline). Then, when qemu-system-arm is installed, builds them again
# with feature `probe` and runs them on QEMU's mps2-an385: each prints the size of its
# client structs and of its job future, the frames it sent, and must exit with status 0
# (the job completed).
#
#   benches/size-clients/measure.sh            # opt-level "s" (the profile's)
#   OPT=z benches/size-clients/measure.sh      # every firmware at opt-level "z"
#   NO_QEMU=1 benches/size-clients/measure.sh  # sizes only
#
# Needs: rustup target thumbv7m-none-eabi; arm-none-eabi-size (apt-get install
# binutils-arm-none-eabi) or llvm-size; qemu-system-arm (apt-get install
# qemu-system-arm) for the run.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
if [[ -n "${OPT:-}" ]]; then
    export CARGO_PROFILE_RELEASE_OPT_LEVEL="$OPT"
fi
out="$CARGO_TARGET_DIR/elf"
mkdir -p "$out"
bin="$CARGO_TARGET_DIR/thumbv7m-none-eabi/release"
fws=(fw-baseline fw-mote fw-minimq fw-rust-mqtt)

if command -v arm-none-eabi-size >/dev/null; then
    size_tool=arm-none-eabi-size
elif command -v llvm-size >/dev/null; then
    size_tool=llvm-size
else
    echo "need arm-none-eabi-size (binutils-arm-none-eabi) or llvm-size (llvm)" >&2
    exit 1
fi

for fw in "${fws[@]}"; do
    cargo build --release --quiet -p "$fw"
    cp "$bin/$fw" "$out/$fw.elf"
done

# Berkeley format: text (code + read-only data + vector table), data, bss.
read_size() { "$size_tool" -B "$1" | awk 'NR == 2 { print $1, $2, $3 }'; }

read -r bt bd bb < <(read_size "$out/fw-baseline.elf")
echo "opt-level: ${OPT:-s (profile)}; $size_tool -B; bytes"
echo
echo "| firmware | .text | .data | .bss | client .text | client .data | client .bss |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for fw in "${fws[@]}"; do
    read -r t d b < <(read_size "$out/$fw.elf")
    if [[ $fw == fw-baseline ]]; then
        echo "| $fw | $t | $d | $b | – | – | – |"
    else
        echo "| $fw | $t | $d | $b | $((t - bt)) | $((d - bd)) | $((b - bb)) |"
    fi
done
echo
echo "Versions (Cargo.lock):"
for crate in minimq rust-mqtt embedded-io-async embassy-time cortex-m-rt; do
    awk -v n="$crate" '$0 == "name = \"" n "\"" { getline; gsub(/"/, "", $3); print "  " n " " $3 }' Cargo.lock
done
echo "  mote-client (path ../../client-nostd, git $(git -C ../.. rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C ../.. diff --quiet -- codec client-nostd 2>/dev/null || echo ' + local changes'))"
rustc --version | sed 's/^/  /'

if [[ -n "${NO_QEMU:-}" ]] || ! command -v qemu-system-arm >/dev/null; then
    echo
    echo "(no QEMU run: set up qemu-system-arm to check that each job completes and to print state sizes)"
    exit 0
fi

echo
echo "QEMU run (mps2-an385), feature 'probe': sizes on the target (32-bit), frames sent, exit status"
status=0
for fw in "${fws[@]}"; do
    cargo build --release --quiet -p "$fw" --features probe
    cp "$bin/$fw" "$out/$fw-probe.elf"
    echo "== $fw"
    if timeout 60 qemu-system-arm -M mps2-an385 -display none -monitor none -serial none \
        -semihosting-config enable=on,target=native -kernel "$out/$fw-probe.elf"; then
        echo "   job completed (exit 0)"
    else
        echo "   JOB FAILED (exit $?)"
        status=1
    fi
done
exit $status
