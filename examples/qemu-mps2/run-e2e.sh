#!/usr/bin/env bash
# End to end: firmware in QEMU (mote-client, MQTT 5, QoS 1) -> the `mote` broker on the
# host -> the Python consumer decodes every SensorEvent.
#
#   bash examples/qemu-mps2/run-e2e.sh [N]        # N events, default 100; from any directory
#
# 1. Builds the firmware with MOTE_EVENTS=N and MOTE_BROKER_PORT=a free port picked now.
# 2. Starts the repo's broker, `target/debug/mote --memory --mqtt 127.0.0.1:PORT` (running
#    `cargo build -p mote-broker` first if it is missing or older than the broker's or the
#    codec's sources; MOTE_E2E_BROKER=mosquitto uses mosquitto instead).
# 3. Starts examples/python-consumer/consumer.py --count N and waits for its SUBACK.
# 4. Boots QEMU under `timeout 120` (MOTE_E2E_QEMU_TIMEOUT); the firmware exits QEMU by
#    itself, with status 0 once every event was acknowledged.
# 5. Checks that the consumer decoded N events with sequence numbers 0..N-1, each exactly
#    once, and that every field is the one the firmware computed for that sequence number.
# Everything it starts is stopped by PID on exit. The last line is
# `qemu-e2e: 1 passed, 0 failed` (exit 0) or `qemu-e2e: 0 passed, 1 failed` (exit 1);
# a missing tool exits 2 before anything starts.
#
# Needs: cargo with the thumbv7m-none-eabi target, qemu-system-arm, python3 with
# paho-mqtt 2.x (`pip install 'paho-mqtt>=2,<3'`).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
n=${1:-100}
topic=mote/qemu/events
qemu_timeout=${MOTE_E2E_QEMU_TIMEOUT:-120}
broker=${MOTE_E2E_BROKER:-mote}

[[ $n =~ ^[0-9]+$ && $n -ge 1 && $n -le 65535 ]] || { echo "run-e2e: N must be 1..65535" >&2; exit 2; }
[[ $qemu_timeout =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "run-e2e: MOTE_E2E_QEMU_TIMEOUT must be seconds" >&2; exit 2; }
for tool in cargo qemu-system-arm python3 timeout; do
    command -v "$tool" >/dev/null || { echo "run-e2e: missing $tool" >&2; exit 2; }
done
python3 -c "import paho.mqtt, sys; sys.exit(0 if paho.mqtt.__version__.startswith('2') else 1)" 2>/dev/null || {
    echo "run-e2e: needs paho-mqtt 2.x: python3 -m pip install 'paho-mqtt>=2,<3'" >&2
    exit 2
}

work=$(mktemp -d)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
t_start=$(now)

failed() {
    echo "run-e2e: FAILED: $*" >&2
    for f in qemu.out consumer.log broker.log; do
        if [[ -s $work/$f ]]; then
            echo "--- $f" >&2
            tail -n 40 "$work/$f" >&2
        fi
    done
    echo "qemu-e2e: 0 passed, 1 failed"
    exit 1
}

# A port nobody listens on right now (the kernel picks it; a tiny race is acceptable here).
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

echo "run-e2e: building firmware (MOTE_BROKER_PORT=$port MOTE_EVENTS=$n)"
t_build=$(now)
(cd "$here" && MOTE_BROKER_PORT=$port MOTE_EVENTS=$n cargo build --release --quiet) \
    || failed "firmware build"
elf="$here/target/thumbv7m-none-eabi/release/mote-qemu-mps2"
echo "run-e2e: firmware built in $(elapsed "$t_build" "$(now)") s"

case $broker in
    mote)
        # Built if missing, or older than a source file of the broker or the codec.
        if [[ ! -x $root/target/debug/mote ]] || [[ -n $(find "$root/broker" "$root/codec" \
            -path '*/target' -prune -o -newer "$root/target/debug/mote" \
            \( -name '*.rs' -o -name Cargo.toml \) -print -quit) ]]; then
            echo "run-e2e: building the broker (cargo build -p mote-broker)"
            (cd "$root" && cargo build -p mote-broker --quiet) || failed "broker build"
        fi
        "$root/target/debug/mote" --memory --mqtt "127.0.0.1:$port" >"$work/broker.log" 2>&1 &
        ;;
    mosquitto)
        command -v mosquitto >/dev/null || { echo "run-e2e: missing mosquitto" >&2; exit 2; }
        printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$work/mosquitto.conf"
        if [[ $(id -u) -eq 0 ]]; then echo "user root" >>"$work/mosquitto.conf"; fi
        mosquitto -c "$work/mosquitto.conf" >"$work/broker.log" 2>&1 &
        ;;
    *) echo "run-e2e: MOTE_E2E_BROKER must be mote or mosquitto" >&2; exit 2 ;;
esac
broker_pid=$!
pids+=("$broker_pid")
echo "run-e2e: broker $broker on 127.0.0.1:$port (pid $broker_pid)"

# Wait (at most 10 s) until the broker accepts connections.
up=0
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=1; break; fi
    kill -0 "$broker_pid" 2>/dev/null || break
    sleep 0.1
done
[[ $up -eq 1 ]] || failed "broker not listening on 127.0.0.1:$port"

python3 "$root/examples/python-consumer/consumer.py" --port "$port" --topic "$topic" \
    --count "$n" --timeout "$(awk -v t="$qemu_timeout" 'BEGIN { print t + 30 }')" --out "$work/events.jsonl" \
    >/dev/null 2>"$work/consumer.log" &
consumer_pid=$!
pids+=("$consumer_pid")
for _ in $(seq 100); do
    grep -qs '^consumer: subscribed' "$work/consumer.log" && break
    kill -0 "$consumer_pid" 2>/dev/null || break
    sleep 0.1
done
grep -qs '^consumer: subscribed' "$work/consumer.log" || failed "consumer did not subscribe"
echo "run-e2e: consumer subscribed to $topic (pid $consumer_pid)"

echo "run-e2e: booting QEMU (timeout ${qemu_timeout}s)"
t_boot=$(now)
set +e
timeout "$qemu_timeout" qemu-system-arm -M mps2-an385 -icount shift=auto \
    -display none -monitor none -semihosting-config enable=on,target=native \
    -nic user -kernel "$elf" >"$work/qemu.out" 2>&1 &
qemu_pid=$!
pids+=("$qemu_pid")
wait "$qemu_pid"
qemu_rc=$?
t_exit=$(now)
sed 's/^/  | /' "$work/qemu.out"
# The consumer exits by itself after N events; give stragglers 10 s.
if [[ $qemu_rc -eq 0 ]]; then
    for _ in $(seq 100); do
        kill -0 "$consumer_pid" 2>/dev/null || break
        sleep 0.1
    done
fi
kill "$consumer_pid" 2>/dev/null
wait "$consumer_pid"
consumer_rc=$?
set -e
echo "run-e2e: qemu exit $qemu_rc after $(elapsed "$t_boot" "$t_exit") s; consumer exit $consumer_rc"
[[ $qemu_rc -ne 124 ]] || failed "QEMU still running after ${qemu_timeout} s"
[[ $qemu_rc -eq 0 ]] || failed "firmware exit status $qemu_rc"

# Every event exactly once, each field as the firmware made it (src/mqtt.rs `event`).
python3 - "$work/events.jsonl" "$n" "$t_boot" <<'EOF' || failed "consumer output check"
import json, struct, sys

path, n, t_boot = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
events = [json.loads(line) for line in open(path, encoding="utf-8")]

def expected(seq):
    ch = seq % 5
    kind, value = [
        ("F32", 20.0 + (seq % 100) * 0.25),
        ("I32", -1000 * seq),
        ("U32", 1 << (seq % 32)),
        ("Bool", seq % 2 == 1),
        ("I64", -(1 << (seq % 63))),
    ][ch]
    return dict(device=385, channel=ch, kind=kind, value=value, topic="mote/qemu/events", qos=1)

seqs = sorted(e["seq"] for e in events)
dups = sorted({s for s in seqs if seqs.count(s) > 1})
missing = sorted(set(range(n)) - set(seqs))
extra = sorted(set(seqs) - set(range(n)))
bad = [e for e in events if {k: e[k] for k in expected(e["seq"])} != expected(e["seq"])]
print(f"run-e2e: consumer decoded {len(events)}/{n} events; "
      f"missing {missing[:10]}, duplicated {dups[:10]}, unexpected {extra[:10]}, wrong fields {len(bad)}")
for e in bad[:5]:
    print("  wrong:", e, "expected", expected(e["seq"]))
if events:
    first = min(e["received_ms"] for e in events) / 1000 - t_boot
    last = max(e["received_ms"] for e in events) / 1000 - t_boot
    stamps = [e["timestamp_ms"] for e in sorted(events, key=lambda e: e["seq"])]
    print(f"run-e2e: QEMU start -> first event at the consumer {first:.2f} s, -> last {last:.2f} s; "
          f"firmware timestamps {stamps[0]}..{stamps[-1]} ms after boot")
ok = len(events) == n and seqs == list(range(n)) and not bad
sys.exit(0 if ok else 1)
EOF
[[ $consumer_rc -eq 0 ]] || failed "consumer exit status $consumer_rc"
echo "run-e2e: whole run $(elapsed "$t_start" "$(now)") s"
echo "qemu-e2e: 1 passed, 0 failed"
