#!/usr/bin/env python3
"""MQTT over TLS: mote --memory beside Mosquitto on the same machine (issue #14).

Every measurement starts a fresh broker with a TLS listener on a free loopback port,
drives it with `mqtt-load --tls` (benches/load: rustls on ring, the same client for both
brokers; it verifies the broker's certificate against the test CA and makes every
handshake a full one, no session resumption), and stops it again. Each round runs every
scenario on both brokers, the scenarios interleaved and the broker order reversed from
one round to the next. Reported: the median (min–max) over the rounds, the loss or the
failed connections next to every figure, and the median (min–max) of the per-round
ratios mote ÷ Mosquitto.

Certificates (made with `openssl` in a temporary directory, one set per key type): a CA,
a server certificate for IP 127.0.0.1 and DNS localhost, a client certificate (CN
bench-client, clientAuth) for mutual TLS. Key types: ECDSA P-256 (`ecdsa`) and RSA-2048
(`rsa`), all signed with SHA-256.

Scenarios (64-byte payloads, as benches/compare.py; throughput with the first key type)
  fanin       QoS 0, 8 publishers (`load/<i>`) -> 1 subscriber of `load/#`;
              delivered msgs/s, over TLS and, as a reference, over plain TCP.
  pairs       QoS 1 on both legs, 8 pairs (publisher i -> subscriber i), 100 in flight
              per publisher; delivered msgs/s, over TLS and over plain TCP.
  handshake   N whole connections, K at a time (mqtt-load --connect-rate): TCP connect,
              TLS handshake, CONNECT/CONNACK, DISCONNECT, the broker closes. Reported:
              connections/s, the p50/p99 of connect start -> CONNACK under that load,
              the CPU each process used per connection, and the p50/p99 of a second
              run one connection at a time (no queueing). Variants per key type: TLS
              1.3, TLS 1.2, and both again with a client certificate the broker
              requires and verifies (mTLS); plus plain TCP once as a reference. The
              client verifies the broker's chain once per run and the handshake
              signature every time (--tls-verify cached), which keeps its CPU per
              handshake near the broker's; nothing is resumed.

Broker settings (as compare.py, plus the TLS listener)
  mote        --memory; max_queued_messages 1,000,000, max_queued_bytes and the memory
              queue budget 4 GiB, max_inflight 1000, max_connections 20,000; a
              [[listener]] transport "tls" (mTLS: client_ca_file, require_certificate).
  Mosquitto   user root, listener PORT 127.0.0.1 with cafile/certfile/keyfile (mTLS:
              require_certificate true), allow_anonymous true, max_inflight_messages
              1000, max_queued_messages 1,000,000, set_tcp_nodelay true, persistence
              false.

Both brokers serve connections on one thread (mote's default worker_threads = 1;
Mosquitto is single-threaded). The load generator shares the machine's cores with the
broker; the CPU each used per message or connection is reported beside the figures.

Usage (from the repository root):
    nice -n 10 cargo build --release -p mote-broker -p mote-load
    flock /tmp/mote-bench.lock python3 benches/tls_bench.py [--rounds 3] [--out FILE]
    python3 benches/tls_bench.py --from-json FILE      # the tables of an earlier run
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (CLK_TCK, ROOT, children_cpu_ticks, find_exe, fmt_val, free_port,  # noqa: E402
                     interrupt_on_signals, machine_cpu_secs, proc_cpu_ticks, raise_nofile, reap,
                     reap_all, run_load, sh, spawn, wait_port)

KEEP_ALIVE = "600"
BROKERS = ("mote", "mosquitto")
KEY_TYPES = {
    "ecdsa": ("ECDSA P-256", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
    "rsa": ("RSA-2048", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
}

# --------------------------------------------------------------------------------------
# Certificates


def openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def make_certs(key_type, base):
    """A CA, a server certificate (127.0.0.1, localhost) and a client certificate, all
    with keys of `key_type`, in `base/<key_type>/`; returns their paths."""
    d = os.path.join(base, key_type)
    os.makedirs(d, exist_ok=True)
    gen = KEY_TYPES[key_type][1]
    with open(os.path.join(d, "ca.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
                "subjectKeyIdentifier=hash\n")
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "authorityKeyIdentifier=keyid\n")
    with open(os.path.join(d, "client.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=clientAuth\nauthorityKeyIdentifier=keyid\n")
    openssl("genpkey", *gen, "-out", "ca.key", cwd=d)
    openssl("req", "-new", "-key", "ca.key", "-subj", "/CN=mote-bench CA", "-out", "ca.csr", cwd=d)
    openssl("x509", "-req", "-in", "ca.csr", "-signkey", "ca.key", "-days", "30", "-sha256",
            "-extfile", "ca.ext", "-out", "ca.pem", cwd=d)
    for name, cn in (("server", "localhost"), ("client", "bench-client")):
        openssl("genpkey", *gen, "-out", f"{name}.key", cwd=d)
        openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}", "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "30", "-sha256", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem", cwd=d)
    openssl("verify", "-CAfile", "ca.pem", "server.pem", "client.pem", cwd=d)
    return {k: os.path.join(d, f) for k, f in (("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key"),
                                               ("client_cert", "client.pem"), ("client_key", "client.key"))}


# --------------------------------------------------------------------------------------
# Brokers


class Broker:
    """One broker kind; `start` returns the address of a fresh process serving `tls`
    (None: plain TCP; otherwise a dict of cert paths and `mtls`)."""

    def __init__(self, name, exe):
        self.name, self.exe = name, exe
        self.proc = None
        self.log = None

    def start(self, run_dir, tls):
        port = free_port()
        cmd, probe = self.command(port, run_dir, tls)
        self.log = open(os.path.join(run_dir, f"{self.name}.log"), "w")
        self.proc = spawn(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, cwd=run_dir)
        wait_port(probe, self.proc)
        return f"127.0.0.1:{port}"

    def pid(self):
        return self.proc.pid

    def stop(self):
        reap(self.proc)
        self.proc = None
        if self.log:
            self.log.close()
            self.log = None


class Mote(Broker):
    CONFIG = ("[mqtt]\nmax_queued_messages = 1000000\nmax_queued_bytes = 4294967296\n"
              "max_inflight = 1000\nmax_connections = 20000\n"
              "[storage]\nqueue_memory_bytes = 4294967296\n")

    def command(self, port, run_dir, tls):
        text = self.CONFIG
        mqtt_port = port
        if tls:
            # The plain listener gets a port of its own; it starts after the TLS ones,
            # so it answering means the TLS listener is bound.
            mqtt_port = free_port()
            text += (f'[[listener]]\ntransport = "tls"\naddress = "127.0.0.1:{port}"\n'
                     f'cert_file = "{tls["cert"]}"\nkey_file = "{tls["key"]}"\n')
            if tls["mtls"]:
                text += f'client_ca_file = "{tls["ca"]}"\nrequire_certificate = true\n'
        cfg = os.path.join(run_dir, "mote.toml")
        with open(cfg, "w") as f:
            f.write(text)
        return ([self.exe, "--memory", "--mqtt", f"127.0.0.1:{mqtt_port}", "--config", cfg, "--log", "warn"],
                mqtt_port)

    def version(self):
        return sh([self.exe, "--version"])


class Mosquitto(Broker):
    def command(self, port, run_dir, tls):
        text = (f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\n"
                "max_queued_messages 1000000\nset_tcp_nodelay true\npersistence false\n"
                "log_dest stderr\nlog_type error\nlog_type warning\n")
        if tls:
            text += f"cafile {tls['ca']}\ncertfile {tls['cert']}\nkeyfile {tls['key']}\n"
            if tls["mtls"]:
                text += "require_certificate true\n"
        if os.geteuid() == 0:
            text += "user root\n"
        cfg = os.path.join(run_dir, "mosquitto.conf")
        with open(cfg, "w") as f:
            f.write(text)
        return [self.exe, "-c", cfg], port

    def version(self):
        out = subprocess.run([self.exe, "-h"], capture_output=True, text=True).stdout
        return out.splitlines()[0] if out else ""


# --------------------------------------------------------------------------------------
# Scenarios


class Scenario:
    """One measurement: `kind` "load" (messages) or "rate" (connections)."""

    def __init__(self, key, label, kind, args, key_type=None, transport="tls", mtls=False, version=None):
        self.key, self.label, self.kind, self.args = key, label, kind, args
        self.key_type, self.transport, self.mtls, self.version = key_type, transport, mtls, version

    @property
    def unit(self):
        return {"load": "msg/s", "rate": "conn/s", "lat": "µs"}[self.kind]


def scenarios(a):
    fanin = ["--publishers", "8", "--subscribers", "1", "--topic-per-publisher", "--qos", "0", "--size", "64",
             "--count", str(a.fanin_count)]
    pairs = ["--publishers", "8", "--subscribers", "8", "--pairs", "--qos", "1", "--inflight", "100",
             "--size", "64", "--count", str(a.pairs_count)]
    kt = a.keys[0]
    kname = KEY_TYPES[kt][0]
    out = []
    if "fanin" in a.scenarios:
        out.append(Scenario("fanin-tls", f"fan-in QoS 0, 8→1, {8 * a.fanin_count:,} msgs, TLS 1.3 ({kname})",
                            "load", fanin + ["--tls-version", "1.3"], kt))
        if a.plain:
            out.append(Scenario("fanin-tcp", "the same over plain TCP", "load", fanin, transport="tcp"))
    if "pairs" in a.scenarios:
        out.append(Scenario("pairs-tls", f"pairs QoS 1, 8 pairs, 100 in flight, {8 * a.pairs_count:,} msgs, "
                            f"TLS 1.3 ({kname})", "load", pairs + ["--tls-version", "1.3"], kt))
        if a.plain:
            out.append(Scenario("pairs-tcp", "the same over plain TCP", "load", pairs, transport="tcp"))
    if "handshake" in a.scenarios:
        # Each variant twice: K at a time for the rate, then one at a time for the latency
        # without queueing. The chain is verified once per run (--tls-verify cached): the
        # handshake signature still is on every handshake, and the client's CPU per
        # handshake drops below the broker's (see benches/load/src/tls.rs).
        rate = ["--connect-rate", str(a.handshakes), "--connect-concurrency", str(a.concurrency)]
        alone = ["--connect-rate", str(a.latency_handshakes), "--connect-concurrency", "1"]
        variants = [("tcp", "plain TCP (reference)", None, False, None)] if a.plain else []
        for kt in a.keys:
            for mtls in (False, True):
                for v in ("1.3", "1.2"):
                    key = f"{kt}-tls{v.replace('.', '')}" + ("-mtls" if mtls else "")
                    label = f"{KEY_TYPES[kt][0]}, TLS {v}" + (", mTLS" if mtls else "")
                    variants.append((key, label, kt, mtls, v))
        for key, label, kt, mtls, v in variants:
            extra = [] if kt is None else ["--tls-version", v, "--tls-verify", "cached"]
            transport = "tcp" if kt is None else "tls"
            out.append(Scenario(f"conn-{key}", label, "rate", rate + extra, kt, transport, mtls, v))
            out.append(Scenario(f"lat-{key}", label, "lat", alone + extra, kt, transport, mtls, v))
    return out


def load_cmd(a, addr, sc, certs):
    cmd = [a.load, "--broker", addr, "--json", "--timeout", str(a.run_timeout), "--keep-alive", KEEP_ALIVE]
    if sc.transport == "tls":
        c = certs[sc.key_type]
        cmd += ["--tls", "--cafile", c["ca"]]
        if sc.mtls:
            cmd += ["--cert", c["client_cert"], "--key", c["client_key"]]
    return cmd + sc.args


def sched_wait_ns(pid):
    """Nanoseconds the threads of `pid` have spent runnable but waiting for a CPU."""
    total = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    except OSError:
        pass
    return total


def measure(a, broker, sc, rnd, certs, work):
    run_dir = tempfile.mkdtemp(prefix=f"{broker.name}-{sc.key}-", dir=work)
    rec = {"scenario": sc.key, "broker": broker.name, "round": rnd}
    tls = None
    if sc.transport == "tls":
        tls = dict(certs[sc.key_type], mtls=sc.mtls)
    for attempt in range(1 + a.retries):
        try:
            addr = broker.start(run_dir, tls)
            busy0, total0 = machine_cpu_secs()
            b0, l0 = proc_cpu_ticks(broker.pid()), children_cpu_ticks()
            w0 = sched_wait_ns(broker.pid())
            t0 = time.monotonic()
            rc, report, err = run_load(load_cmd(a, addr, sc, certs), a.run_timeout + 30)
            secs = time.monotonic() - t0
            busy1, total1 = machine_cpu_secs()
            b1, l1 = proc_cpu_ticks(broker.pid()), children_cpu_ticks()
            w1 = sched_wait_ns(broker.pid())
            alive = broker.proc.poll() is None
        finally:
            broker.stop()
        foreign = ((busy1 - busy0) - (b1 - b0) - (l1 - l0)) / max(1, total1 - total0)
        rec.update(rc=rc, report=report, stderr=err[-2000:], secs=round(secs, 2), attempts=attempt + 1,
                   broker_alive=alive, foreign_cpu=round(foreign, 3),
                   broker_wait_frac=round((w1 - w0) / 1e9 / max(secs, 1e-3), 3),
                   broker_cpu_secs=round((b1 - b0) / CLK_TCK, 2), load_cpu_secs=round((l1 - l0) / CLK_TCK, 2))
        if foreign <= a.max_foreign or attempt == a.retries:
            break
        print(f"    other processes used {foreign:.0%} of the machine; again in {a.retry_wait:g} s", flush=True)
        time.sleep(a.retry_wait)
    report = report or {}
    if sc.kind == "load":
        d = report.get("delivery") or {}
        rec["value"] = d.get("msgs_per_sec")
        rec["lost"] = d.get("lost", 0) or 0
        rec["units"] = d.get("received")
        rec["p50"] = rec["p99"] = None
    else:
        lat = report.get("connect_us") or {}
        rec["p50"], rec["p99"] = lat.get("p50"), lat.get("p99")
        rec["value"] = report.get("conns_per_sec") if sc.kind == "rate" else rec["p50"]
        rec["lost"] = report.get("failed", 0) or 0
        rec["units"] = report.get("completed")
    rec["tls"] = report.get("tls")
    rec["problems"] = report.get("problems") or ([report["error"]] if report.get("error") else [])
    if rc not in (0, 2) or rec["value"] is None:
        rec["failed"] = True
        rec["problems"] = rec["problems"] + [f"exit {rc}: {err[-300:]}"]
    shutil.rmtree(run_dir, ignore_errors=True)
    return rec


# --------------------------------------------------------------------------------------
# Tables


def fmt(v, unit):
    """compare.py's `fmt_val`, with thousands separators for counts (connections/s)."""
    if v is not None and unit not in ("msg/s", "µs", "B"):
        return f"{v:,.0f}"
    return fmt_val(v, unit)


def runs_of(results, key, broker):
    return [r for r in results if r["scenario"] == key and r["broker"] == broker]


def med_range(vals, unit):
    if not vals:
        return "–", None
    m = statistics.median(vals)
    t = fmt(m, unit)
    if len(vals) > 1:
        t += f" ({fmt(min(vals), unit)}–{fmt(max(vals), unit)})"
    return t, m


def loss_text(sc, runs):
    what = "lost" if sc.kind == "load" else "failed"
    bad = [r for r in runs if r.get("lost")]
    if not bad:
        return f" · 0 {what}"
    worst = max(r["lost"] for r in bad)
    unit = "msgs" if sc.kind == "load" else "connections"
    extra = " — not a throughput" if sc.kind == "load" else ""
    return f" **{what.upper()}: {len(bad)}/{len(runs)} runs, up to {worst:,} {unit}{extra}**"


def cell(results, sc, broker, field="value", unit=None):
    runs = runs_of(results, sc.key, broker)
    if not runs:
        return "not run", None
    vals = [r[field] for r in runs if r.get(field) is not None]
    text, m = med_range(vals, unit or sc.unit)
    failed = [r for r in runs if r.get("failed")]
    if failed:
        text += f" [{len(failed)} failed]"
    return text, m


def ratios(results, sc, field="value"):
    """Per-round mote ÷ Mosquitto: median (min–max)."""
    rs = []
    for rnd in sorted({r["round"] for r in results if r["scenario"] == sc.key}):
        m = [r.get(field) for r in results if r["scenario"] == sc.key and r["broker"] == "mote" and r["round"] == rnd]
        p = [r.get(field) for r in results if r["scenario"] == sc.key and r["broker"] == "mosquitto"
             and r["round"] == rnd]
        if m and p and m[0] and p[0]:
            rs.append(m[0] / p[0])
    if not rs:
        return "–"
    t = f"{statistics.median(rs):.2f}"
    if len(rs) > 1:
        t += f" ({min(rs):.2f}–{max(rs):.2f})"
    return t


def throughput_table(results, scs):
    out = ["| scenario | mote | Mosquitto | mote ÷ Mosquitto, per round |", "|---|---|---|---:|"]
    for sc in scs:
        if sc.kind != "load":
            continue
        cells = []
        for b in BROKERS:
            t, _ = cell(results, sc, b)
            cells.append(t + loss_text(sc, runs_of(results, sc.key, b)))
        out.append(f"| {sc.label} | " + " | ".join(cells) + f" | {ratios(results, sc)} |")
    return "\n".join(out)


def tls_cost_table(results, scs):
    """TLS ÷ plain TCP per broker (medians), where both were run."""
    pairs = [(s, t) for s in scs for t in scs if s.kind == "load" and s.transport == "tls"
             and t.key == s.key.replace("-tls", "-tcp")]
    if not pairs:
        return ""
    out = ["| scenario | mote TLS ÷ TCP | Mosquitto TLS ÷ TCP |", "|---|---:|---:|"]
    for s, t in pairs:
        cells = []
        for b in BROKERS:
            a = [r["value"] for r in runs_of(results, s.key, b) if r.get("value")]
            p = [r["value"] for r in runs_of(results, t.key, b) if r.get("value")]
            cells.append(f"{statistics.median(a) / statistics.median(p):.2f}" if a and p else "–")
        out.append(f"| {s.key.split('-')[0]} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def handshake_table(results, scs):
    out = ["| handshake | mote conn/s | Mosquitto conn/s | mote ÷ Mosquitto, per round | "
           "mote p50 / p99 | Mosquitto p50 / p99 |", "|---|---|---|---:|---:|---:|"]
    for sc in scs:
        if sc.kind != "rate":
            continue
        cells, lat = [], []
        for b in BROKERS:
            runs = runs_of(results, sc.key, b)
            t, _ = cell(results, sc, b)
            cells.append(t + loss_text(sc, runs))
            lat.append(p50_p99(runs))
        out.append(f"| {sc.label} | " + " | ".join(cells) + f" | {ratios(results, sc)} | " + " | ".join(lat) + " |")
    return "\n".join(out)


def p50_p99(runs):
    p50 = [r["p50"] for r in runs if r.get("p50") is not None]
    p99 = [r["p99"] for r in runs if r.get("p99") is not None]
    if not (p50 and p99):
        return "–"
    return f"{fmt(statistics.median(p50), 'µs')} / {fmt(statistics.median(p99), 'µs')}"


def cpu_per_unit(runs, field):
    runs = [r for r in runs if r.get("units")]
    if not runs:
        return None
    return statistics.median(r[field] / r["units"] * 1e6 for r in runs)


def cost_table(results, scs):
    """Per variant: each broker's CPU per connection in the rate runs (the broker's own
    cost, whatever the client took), the generator's, and the latency one at a time."""
    out = ["| handshake | broker CPU µs/conn: mote | Mosquitto | mote ÷ Mosquitto | "
           "mqtt-load CPU µs/conn (mote run / Mosquitto run) | one at a time, p50 / p99: mote | Mosquitto |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for sc in scs:
        if sc.kind != "rate":
            continue
        lat_key = "lat-" + sc.key[len("conn-"):]
        bc = {b: cpu_per_unit(runs_of(results, sc.key, b), "broker_cpu_secs") for b in BROKERS}
        lc = {b: cpu_per_unit(runs_of(results, sc.key, b), "load_cpu_secs") for b in BROKERS}
        r = f"{bc['mote'] / bc['mosquitto']:.2f}" if bc["mote"] and bc["mosquitto"] else "–"
        lat = []
        for b in BROKERS:
            runs = runs_of(results, lat_key, b)
            bad = sum(1 for x in runs if x.get("lost"))
            lat.append(p50_p99(runs) + (f" **{bad} run(s) with failed connections**" if bad else ""))
        f = (lambda v: "–" if v is None else f"{v:,.0f}")
        out.append(f"| {sc.label} | {f(bc['mote'])} | {f(bc['mosquitto'])} | {r} | "
                   f"{f(lc['mote'])} / {f(lc['mosquitto'])} | " + " | ".join(lat) + " |")
    return "\n".join(out)


def cpu_table(results, scs):
    """Broker and load-generator CPU µs per delivered message."""
    out = ["| scenario | mote broker / mqtt-load | Mosquitto broker / mqtt-load |", "|---|---:|---:|"]
    for sc in scs:
        if sc.kind != "load":
            continue
        cells = []
        for b in BROKERS:
            runs = runs_of(results, sc.key, b)
            bc, lc = cpu_per_unit(runs, "broker_cpu_secs"), cpu_per_unit(runs, "load_cpu_secs")
            cells.append("–" if bc is None else f"{bc:.2f} / {lc:.2f}")
        out.append(f"| {sc.label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def negotiated(results):
    seen = {}
    for r in results:
        t = r.get("tls")
        if t:
            seen.setdefault((r["broker"], t["version"], t["cipher_suite"], t["kx_group"]), 0)
            seen[(r["broker"], t["version"], t["cipher_suite"], t["kx_group"])] += 1
    return "; ".join(f"{b}: {v} {c} {k} ({n} runs)" for (b, v, c, k), n in sorted(seen.items()))


def render(doc):
    a = argparse.Namespace(**doc["settings"])
    results = doc["runs"]
    scs = scenarios(a)
    parts = [f"command: `{doc['command']}`", f"date: {doc['date']}", "",
             "versions: " + "; ".join(f"{k}: {v}" for k, v in doc["versions"].items()), "",
             "Median (min–max) over the rounds; loss (messages) or failed connections next to every "
             "figure. Ratios: median (min–max) of the per-round ratios mote ÷ Mosquitto; above 1 "
             "favours mote.", ""]
    if any(s.kind == "load" for s in scs):
        parts += ["Throughput, delivered msg/s:", "", throughput_table(results, scs), ""]
        c = tls_cost_table(results, scs)
        if c:
            parts += ["TLS throughput ÷ plain TCP throughput (medians):", "", c, ""]
        parts += ["CPU µs per delivered message, medians (broker / load generator); CPU time is "
                  "counted in 10 ms ticks:", "", cpu_table(results, scs), ""]
    if any(s.kind == "rate" for s in scs):
        parts += [f"Handshake rate: {a.handshakes:,} connections per run, {a.concurrency} at a time; "
                  "latency = connect start → CONNACK, under that load:", "", handshake_table(results, scs), "",
                  f"Cost per connection in those runs (medians; CPU time in 10 ms ticks), and the latency "
                  f"one connection at a time ({a.latency_handshakes:,} per run):", "",
                  cost_table(results, scs), ""]
    parts.append("negotiated: " + negotiated(results))
    fr = sorted(r.get("foreign_cpu", 0.0) for r in results)
    if fr:
        parts.append(f"CPU used by other processes during the runs: median {statistics.median(fr):.1%}, "
                     f"max {fr[-1]:.1%} of the machine; {sum(r.get('attempts', 1) - 1 for r in results)} repeats.")
    bw = sorted(r["broker_wait_frac"] for r in results if r.get("broker_wait_frac") is not None)
    if bw:
        parts.append(f"Broker threads runnable but waiting for a CPU (schedstat), as a share of the run time: "
                     f"median {statistics.median(bw):.1%}, max {bw[-1]:.1%}.")
    probs = [(r["scenario"], r["broker"], r["round"], p) for r in results for p in r.get("problems", [])
             if "allowed at QoS 0" not in p]
    if probs:
        parts += ["", "Problems reported by the load generator:", ""]
        parts += [f"- {s} / {b} / round {n + 1}: {p}" for s, b, n, p in probs[:40]]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------


def lock_version(name):
    """The version of crate `name` in the workspace's Cargo.lock (the newest if several)."""
    try:
        with open(os.path.join(ROOT, "Cargo.lock")) as f:
            text = f.read()
    except OSError:
        return ""
    vs = re.findall(r'name = "' + re.escape(name) + r'"\nversion = "([^"]+)"', text)
    return max(vs, key=lambda v: [int(x) for x in re.findall(r"\d+", v)]) if vs else ""


def versions_of(a, brokers):
    v = {b.name: b.version() for b in brokers}
    v["mote commit"] = a.mote_commit or sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    v["mote TLS"] = f"rustls {lock_version('rustls')} on ring {lock_version('ring')}"
    mosq = next((b for b in brokers if b.name == "mosquitto"), None)
    libssl = ""
    if mosq:
        ldd = sh(["ldd", mosq.exe])
        m = re.search(r"(libssl\S*)", ldd)
        libssl = m.group(1) if m else ""
    v["Mosquitto TLS"] = f"{sh(['openssl', 'version'])} ({libssl or 'libssl not found by ldd'})"
    v["mqtt-load TLS"] = f"rustls {lock_version('rustls')} on ring, tokio-rustls {lock_version('tokio-rustls')}"
    v["key types"] = ", ".join(f"{KEY_TYPES[k][0]} (SHA-256)" for k in a.keys)
    v["machine"] = f"{os.cpu_count()} cores, {platform.release()}"
    return v


def main():
    interrupt_on_signals()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mote", default=os.path.join(ROOT, "target", "release", "mote"))
    ap.add_argument("--mote-commit", help="the commit --mote was built from [default: this tree's HEAD]")
    ap.add_argument("--load", default=os.path.join(ROOT, "target", "release", "mqtt-load"))
    ap.add_argument("--mosquitto", default=find_exe("mosquitto", "/usr/sbin/mosquitto"))
    ap.add_argument("--scenarios", nargs="+", default=["fanin", "pairs", "handshake"],
                    choices=["fanin", "pairs", "handshake"])
    ap.add_argument("--keys", nargs="+", default=["ecdsa", "rsa"], choices=list(KEY_TYPES),
                    help="key types of the certificates; throughput uses the first")
    ap.add_argument("--no-plain", dest="plain", action="store_false",
                    help="skip the plain-TCP reference runs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke test: one round, small counts")
    ap.add_argument("--fanin-count", type=int, default=300000, help="messages per publisher (8), fan-in")
    ap.add_argument("--pairs-count", type=int, default=50000, help="messages per pair (8), QoS 1 pairs")
    ap.add_argument("--handshakes", type=int, default=4000, help="connections per handshake-rate run")
    ap.add_argument("--concurrency", type=int, default=16, help="connections in progress at once")
    ap.add_argument("--latency-handshakes", type=int, default=300,
                    help="connections per run one at a time (latency without queueing)")
    ap.add_argument("--max-foreign", type=float, default=0.15,
                    help="repeat a run when other processes used more than this fraction of the CPU")
    ap.add_argument("--retries", type=int, default=1)
    ap.add_argument("--retry-wait", type=float, default=5)
    ap.add_argument("--run-timeout", type=int, default=300, help="seconds allowed for one mqtt-load run")
    ap.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "mote-tls-bench"))
    ap.add_argument("--out", help="raw JSON results [default: WORK_DIR/tls-DATE.json]")
    ap.add_argument("--from-json", metavar="FILE", help="measure nothing: print the tables of an earlier run")
    a = ap.parse_args()

    if a.from_json:
        with open(a.from_json) as f:
            print(render(json.load(f)))
        return 0
    if a.quick:
        a.rounds = 1
        a.fanin_count, a.pairs_count, a.handshakes, a.latency_handshakes = 20000, 5000, 500, 50
    if not (a.load and os.access(a.load, os.X_OK)):
        sys.exit(f"not executable: {a.load} (cargo build --release -p mote-broker -p mote-load)")
    if not shutil.which("openssl"):
        sys.exit("openssl not found (it makes the certificates)")
    brokers = []
    for name, kind, exe in (("mote", Mote, a.mote), ("mosquitto", Mosquitto, a.mosquitto)):
        if not (exe and os.access(exe, os.X_OK)):
            sys.exit(f"{name}: no executable ({exe}); Mosquitto: apt-get install -y mosquitto")
        brokers.append(kind(name, exe))
    raise_nofile()

    os.makedirs(a.work_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = a.out or os.path.join(a.work_dir, f"tls-{stamp}.json")
    if os.path.dirname(out_path):
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
    cert_dir = tempfile.mkdtemp(prefix="certs-", dir=a.work_dir)
    certs = {k: make_certs(k, cert_dir) for k in a.keys}
    versions = versions_of(a, brokers)
    command = "python3 benches/tls_bench.py " + " ".join(sys.argv[1:])
    print(f"command: {command}")
    for k, v in versions.items():
        print(f"  {k}: {v}")
    scs = scenarios(a)
    results = []
    t0 = time.monotonic()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    interrupted = False
    try:
        for rnd in range(a.rounds):
            order = brokers if rnd % 2 == 0 else list(reversed(brokers))
            for sc in scs:
                for b in order:
                    rec = measure(a, b, sc, rnd, certs, a.work_dir)
                    results.append(rec)
                    lat = f"  p50/p99 {fmt(rec['p50'], 'µs')}/{fmt(rec['p99'], 'µs')}" if rec.get("p50") else ""
                    what = "lost" if sc.kind == "load" else "failed"
                    val = "" if sc.kind == "lat" else f" {fmt(rec['value'], sc.unit):>8} {sc.unit}"
                    print(f"round {rnd + 1}/{a.rounds}  {sc.key:<22} {b.name:<10}{val}{lat}  {what} {rec['lost']:,}  ({rec['secs']} s, broker CPU "
                          f"{rec['broker_cpu_secs']} s, load CPU {rec['load_cpu_secs']} s, broker waited "
                          f"{rec['broker_wait_frac']:.0%}, other {max(0.0, rec['foreign_cpu']):.0%})"
                          + (f"  problems: {rec['problems']}" if rec.get("problems") else ""), flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted; writing what was measured", file=sys.stderr)
    finally:
        reap_all()
        shutil.rmtree(cert_dir, ignore_errors=True)

    doc = {"command": command, "date": started, "versions": versions,
           "elapsed_secs": round(time.monotonic() - t0, 1), "settings": vars(a),
           "interrupted": interrupted, "runs": results}
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=1)
    print()
    print(render(doc))
    print(f"\nraw results: {out_path} ({len(results)} runs, {time.monotonic() - t0:.0f} s)")
    return 1 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
