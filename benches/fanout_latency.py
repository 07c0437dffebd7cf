#!/usr/bin/env python3
"""Fan-out latency at a fixed rate (1 publisher -> 8 subscribers, 5,000 msgs/s, QoS 1 and
QoS 0): mote with one worker thread, mote with two, and an older build, alternating in
every round (order reversed each round), a fresh broker per run, `--memory`.

Usage (from the repository root):
    cargo build --release -p mote-broker -p mote-load
    flock /tmp/mote-bench.lock python3 benches/fanout_latency.py --base OLD/mote [--rounds 6]
Prints every run (p50, p99, lost) and the medians; `--out FILE` writes them as JSON.
"""
import argparse, json, socket, subprocess, tempfile, time, statistics
ap = argparse.ArgumentParser()
ap.add_argument("--mote", default="target/release/mote")
ap.add_argument("--load", default="target/release/mqtt-load")
ap.add_argument("--base", required=True, help="an older build's mote binary")
ap.add_argument("--rounds", type=int, default=6)
ap.add_argument("--out")
a = ap.parse_args()
LOAD = a.load
CFGS = [("mote-wt1", a.mote, "worker_threads = 1\n"),
        ("mote-wt2", a.mote, "worker_threads = 2\n"),
        ("mote-base", a.base, None)]
rounds = a.rounds
scen = [("QoS1 fan-out 1->8 @5000", ["--qos", "1", "--publishers", "1", "--subscribers", "8", "--rate", "5000", "--duration", "4"]),
        ("QoS0 fan-out 1->8 @5000", ["--qos", "0", "--publishers", "1", "--subscribers", "8", "--rate", "5000", "--duration", "4"])]
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
res = {}
for r in range(rounds):
    order = CFGS if r % 2 == 0 else CFGS[::-1]
    for sname, sargs in scen:
        for name, binp, extra in order:
            d = tempfile.mkdtemp(prefix="lat-")
            port = free_port()
            args = [binp, "--memory", "--mqtt", f"127.0.0.1:{port}", "--log", "warn"]
            if extra:
                open(f"{d}/m.toml", "w").write("[mqtt]\n" + extra)
                args += ["--config", f"{d}/m.toml"]
            b = subprocess.Popen(args, cwd=d)
            time.sleep(0.05)
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.1).close(); break
                except OSError: time.sleep(0.05)
            out = subprocess.run([LOAD, "--broker", f"127.0.0.1:{port}", "--json"] + sargs, capture_output=True, text=True, timeout=120)
            b.terminate(); b.wait()
            try:
                j = json.loads(out.stdout.strip().splitlines()[-1])
            except Exception:
                print("bad output", out.stdout[-300:], out.stderr[-300:]); continue
            p50, p99, lost = j["latency_us"]["p50"], j["latency_us"]["p99"], j["delivery"]["lost"]
            res.setdefault((sname, name), []).append((p50, p99, lost))
            print(f"round {r+1} {sname:26} {name:10} p50 {p50:6} p99 {p99:6} lost {lost}", flush=True)
print()
for (sname, name), v in sorted(res.items()):
    print(f"{sname:26} {name:10} p50 median {statistics.median(x[0] for x in v):7.0f}  p99 median {statistics.median(x[1] for x in v):7.0f}  lost {sum((x[2] or 0) for x in v)}")
if a.out:
    with open(a.out, "w") as f:
        json.dump({f"{k[0]}|{k[1]}": v for k, v in res.items()}, f)
