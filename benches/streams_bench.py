#!/usr/bin/env python3
"""Streams: Mote's `$stream/NAME` beside NATS JetStream, side by side in one invocation.

Three servers run for the whole invocation, each with a data directory of its own in a
temporary directory (removed at the end):

  mote             `mote --data-dir D` with its default durability (`--fsync always`: a
                   PUBACK comes after the append is fsynced);
  mote/fsync=never `mote --data-dir D --fsync never` (written, synced by the OS), which is
                   what JetStream's file store promises (it forces a sync every 2
                   minutes; nats-server 2.9 has no per-write sync);
  jetstream        `nats-server -js -sd D -p PORT`, file-backed streams.

Both Motes get `[mqtt] max_inflight = 1024` so that the readers' Receive Maximum (below)
is what bounds their window, as `max_ack_pending` and the pull size do for JetStream.

Scenarios, 64-byte payloads (--size) carrying a sequence number and the send time; every
message is checked by its sequence number, so loss and duplicates are counted (a
throughput with losses is not a throughput: such a figure is flagged):

(a) append: one connection publishes --append messages with --window (256) publishes in
    flight. Mote: MQTT 5 QoS 1 PUBLISH to `$stream/NAME`, the PUBACK is the durable
    acknowledgement. JetStream: PUB to the stream's subject with a reply subject, the
    PubAck is the acknowledgement. msgs/s (first send to last ack), p50/p99 ack latency.
(b) replay: one reader reads --replay stored messages (appended once per server before
    the first round; that fill's rate is shown too) from the earliest. Mote: MQTT 5
    SUBSCRIBE QoS 1 to `$stream/NAME` with the user property stream-offset=earliest,
    Receive Maximum 1000, a PUBACK per message. JetStream: a new pull consumer (deliver
    all, explicit ack, max_ack_pending 1000), pulls of 500 with at most 1000 messages
    requested and not yet received, an ack per message. (b') the same without acks:
    Mote QoS 0 (the reader commits on sending) beside a pull consumer with AckPolicy
    none. msgs/s (subscribe to last message). Not run for mote/fsync=never (reading
    does not sync).
(c) group: --group messages over --keys (64) keys, published as in (a) while a group of
    2 members (2 processes) consumes them with an ack per message. Mote:
    `$share/g/$stream/NAME` (the key is the topic `$stream/NAME/kI`), Receive Maximum
    512 per member, subscribed before the first publish with stream-offset=earliest.
    JetStream: a durable pull consumer (explicit ack, max_ack_pending 1024) on subjects
    NAME.kI, 2 workers each keeping at most 512 messages requested (pulls of 256).
    msgs/s consumed (first send to last receipt) and p50/p99 end-to-end latency (send
    to receipt, one clock). Mote gives each key to one member (per-key order), so the
    split between the members follows the keys; JetStream's pull consumer has no keys.

The load generator is Python: both sides use a client on raw asyncio sockets from
benchclient.py, shared with queues_bench.py (MQTT 5 and the NATS text protocol, the same
few lines each; nats-py only sets up streams and consumers), with the same windows and
batched writes. Python may be the bottleneck: the client's and the server's CPU per
message are reported so that it shows.
--rounds rounds (3), the servers in alternating order in each scenario; medians
(min-max); ratios mote / jetstream of the medians. The machine may be shared: each
measurement also estimates the CPU and disk writes of other processes and is repeated
(--retries, after --retry-wait s) when they pass --max-foreign / --max-foreign-mb; a
measurement still disturbed is kept and flagged (and left out of the medians when another
round is not). These are estimates: a server's own fsyncs keep the kernel's journal
threads busy, which counts as "other" (a few % of CPU and tens of MB per run for
`--fsync always`). No round starts once one more would pass --budget seconds. --quick:
20,000 messages per scenario, 1 round.

Usage (from the repository root):
    cargo build --release -p mote-broker
    python3 benches/streams_bench.py [--mote target/release/mote] [--quick] [--out FILE.json]
Needs nats-server (apt-get install nats-server) and nats-py (pip install nats-py).
"""

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchclient import (  # noqa: E402,F401  (also used through this module by stream_backlog_bench.py)
    ROOT, SEQ, Members, MoteServer, clock_ns, Mqtt, NatsServer, free_port, js_admin,
    machine_cpu_secs, machine_info, md_table, mpacket, mqtt_read, mstr, nats_pull_read, pct, proc_cpu_secs,
    produce, read_varint, round_problems, busy_problems, run_rounds, self_cpu_secs, sh, span, tally, Seen,
    consumer_problems)

KEYS = 64  # keys in (c): --keys
REPLAY_WINDOW = 1000
GROUP_WINDOW = 512


# ---------------------------------------------------------------------------------------
# Stream setup (nats-py for JetStream's API; Mote needs none: streams are made on first use)


def js_add_stream(addr, name, subjects):
    from nats.js.api import StorageType

    async def fn(js):
        await js.add_stream(name=name, subjects=subjects, storage=StorageType.FILE)
    asyncio.run(js_admin(addr, fn))


def js_add_consumer(addr, stream, durable, ack, max_ack_pending):
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    async def fn(js):
        cfg = ConsumerConfig(durable_name=durable, deliver_policy=DeliverPolicy.ALL,
                             ack_policy=AckPolicy.EXPLICIT if ack else AckPolicy.NONE,
                             max_ack_pending=max_ack_pending if ack else -1, max_waiting=512,
                             inactive_threshold=300.0)
        await js.add_consumer(stream, cfg)
    asyncio.run(js_admin(addr, fn))


def js_stream_messages(addr, stream):
    async def fn(js):
        return (await js.stream_info(stream)).state.messages
    return asyncio.run(js_admin(addr, fn))


def names(kind, scenario, tag, keys=None):
    """(where to publish for key i, what to read): the same names on both sides."""
    stream = f"{scenario}-{tag}"
    if kind == "mqtt":
        keyed = [f"$stream/{stream}/k{i}" for i in range(keys or KEYS)]
        return stream, (keyed if scenario == "group" else [f"$stream/{stream}"]), f"$stream/{stream}"
    subj = stream.replace("-", "_")
    keyed = [f"{subj}.k{i}" for i in range(keys or KEYS)]
    return subj.upper(), (keyed if scenario == "group" else [subj]), subj



# ---------------------------------------------------------------------------------------
# Publishing with a window (scenarios a and c, and the fill of b)


async def publish(kind, addr, topics, n, window, size, lat_ns=None, client_id="bench-pub", timeout=120.0):
    """Publishes n messages (message i to topics[i % len(topics)]) keeping `window`
    unacknowledged; returns counts and times. `lat_ns`: a list to append ack latencies to.
    (benchclient.produce, without a rate.)"""
    return await produce(kind, addr, topics, n, window, size, lat_ns, client_id=client_id, timeout=timeout)


def run_append(srv, tag, a):
    _, topics, _ = names(srv.kind, "append", tag)
    if srv.kind == "nats":
        stream, subjects, _ = names("nats", "append", tag)
        js_add_stream(srv.addr, stream, subjects)
    lat = []
    cpu0, self0 = srv.cpu(), self_cpu_secs()
    r = asyncio.run(publish(srv.kind, srv.addr, topics, a.append, a.window, a.size, lat, f"append-{tag}"))
    cpu, mine = srv.cpu() - cpu0, self_cpu_secs() - self0
    lat.sort()
    return {"msgs_per_sec": r["acked"] / r["secs"], "acked": r["acked"], "lost": r["lost"], "failed": r["failed"],
            "p50_ms": pct(lat, 0.5) / 1e6, "p99_ms": pct(lat, 0.99) / 1e6,
            "server_cpu_us": cpu * 1e6 / max(r["acked"], 1), "client_cpu_us": mine * 1e6 / max(r["acked"], 1),
            "client_cpu_secs": mine, "problems": r["errors"]}


def fill(srv, a):
    """Appends a.replay messages to the replay stream once per server."""
    stream, topics, _ = names(srv.kind, "replay", "all")
    if srv.kind == "nats":
        js_add_stream(srv.addr, stream, topics)
    cpu0 = srv.cpu()
    r = asyncio.run(publish(srv.kind, srv.addr, topics, a.replay, a.window, a.size, None, "fill",
                            timeout=max(120.0, a.replay / 2000)))
    r["msgs_per_sec"] = r["acked"] / r["secs"]
    r["server_cpu_us"] = (srv.cpu() - cpu0) * 1e6 / max(r["acked"], 1)
    if srv.kind == "nats":
        r["stored"] = js_stream_messages(srv.addr, stream)
    return r


def run_replay(srv, tag, a, acked):
    """Reads the whole replay stream from the earliest, with or without acks."""
    stream, _, read = names(srv.kind, "replay", "all")
    seen = Seen(a.replay)
    cpu0, self0 = srv.cpu(), self_cpu_secs()
    if srv.kind == "mqtt":
        t0 = clock_ns()
        asyncio.run(mqtt_read(srv.addr, f"replay-{tag}", read, 1 if acked else 0, REPLAY_WINDOW, "earliest",
                              seen, a.replay, lambda: False))
    else:
        consumer = f"replay_{tag}"
        js_add_consumer(srv.addr, stream, consumer, acked, REPLAY_WINDOW)
        t0 = clock_ns()
        asyncio.run(nats_pull_read(srv.addr, stream, consumer, acked, REPLAY_WINDOW // 2, REPLAY_WINDOW, seen,
                                   a.replay, lambda: False))
    cpu, mine = srv.cpu() - cpu0, self_cpu_secs() - self0
    secs = (seen.last - t0) / 1e9
    problems = [f"{seen.foreign} messages not of this run, e.g. {seen.sample!r}"] if seen.foreign else []
    return {"msgs_per_sec": seen.unique / secs if secs > 0 else 0.0, "received": seen.unique,
            "lost": a.replay - seen.unique, "dups": seen.dups,
            "server_cpu_us": cpu * 1e6 / max(seen.unique, 1), "client_cpu_us": mine * 1e6 / max(seen.unique, 1),
            "client_cpu_secs": mine, "problems": problems}


# ---------------------------------------------------------------------------------------
# The group (scenario c): members in processes of their own (benchclient.Members)


async def group_read(kind, addr, stream, read, *, name, seen, go, stop, on_chunk):
    """One member of the group: reads until told to stop (go(): subscribed, pulls due)."""
    n = len(seen.bits) + 1
    if kind == "mqtt":
        await mqtt_read(addr, name, f"$share/g/{read}", 1, GROUP_WINDOW, "earliest", seen, n, stop, go, on_chunk,
                        idle=1e9)
    else:
        await nats_pull_read(addr, stream, "g", True, GROUP_WINDOW // 2, GROUP_WINDOW, seen, n, stop, go, on_chunk,
                             idle=1e9)


def run_group(srv, tag, a, ctx):
    stream, topics, read = names(srv.kind, "group", tag, a.keys)
    if srv.kind == "nats":
        js_add_stream(srv.addr, stream, [f"{stream.lower()}.*"])
        js_add_consumer(srv.addr, stream, "g", True, 2 * GROUP_WINDOW)
    members = Members(ctx, group_read, [f"member-{tag}-{i}" for i in range(2)],
                      [(srv.kind, srv.addr, stream, read)] * 2, a.group, latency=True, ready_timeout=30)
    try:
        time.sleep(0.2)
        cpu0, self0 = srv.cpu(), self_cpu_secs()
        first = clock_ns()
        pub = asyncio.run(publish(srv.kind, srv.addr, topics, a.group, a.window, a.size, None, f"group-pub-{tag}"))
        # Until the members have as many as were acknowledged, or nothing more comes.
        members.wait(lambda: pub["acked"], a.settle, poll=0.02)
        results = members.finish(grace=0)
        cpu, mine = srv.cpu() - cpu0, self_cpu_secs() - self0
    finally:
        members.reap()
    received, _, dups, _ = tally(results, None, a.group)
    lat = sorted(x for r in results for x in r["lat_ns"])
    secs = (max(r["last"] for r in results) - first) / 1e9
    members_cpu = sum(r["cpu"] for r in results)
    problems = pub["errors"] + consumer_problems(results)
    return {"msgs_per_sec": received / secs if secs > 0 else 0.0, "published": pub["acked"], "received": received,
            "lost": pub["acked"] - received, "dups": dups, "p50_ms": pct(lat, 0.5) / 1e6,
            "p99_ms": pct(lat, 0.99) / 1e6, "split": [sum(r["bits"]) for r in results],
            "server_cpu_us": cpu * 1e6 / max(received, 1),
            "client_cpu_us": (mine + members_cpu) * 1e6 / max(received, 1), "client_cpu_secs": mine + members_cpu,
            "problems": problems}


# ---------------------------------------------------------------------------------------
# Report


def markdown(res, info, a, cmd):
    ms = lambda v: f"{v:.2f} ms"
    f1 = lambda v: f"{v:.1f}"
    rounds = len(res["rounds"])
    out = [f"Machine: {info['nproc']} vCPUs ({info['cpu']}), load average {info['load']} at the start; "
           f"{info['date']}; {info['mote']} ({info['mote_path']}, {info['mote_id']}; the tree at {info['git']}); "
           f"{info['nats']}; Python "
           f"{info['python']}, nats-py {info['nats_py']} (setup only); {info['secs']} s in all.", "",
           f"Command: `{cmd}`", "",
           f"Payload {a.size} B; append window {a.window}; {rounds} round(s); median (min–max) over the rounds "
           "whose measurement no other process disturbed (\"rounds used\"; see the end); lost/dups summed over "
           "every measurement; CPU is µs per message (server: its process; client: the Python load generator's "
           "processes).", "",
           "Servers: `mote` = `mote --data-dir D` (its default `--fsync always`: fsync before the PUBACK); "
           "`mote/fsync=never` = the same with `--fsync never` (written to the OS, synced by it); `jetstream` = "
           "`nats-server -js -sd D`, file storage (acknowledged once written to the OS; it forces a sync every "
           "2 minutes, and this version has no per-write sync).", ""]

    def table(title, scen, cols):
        # The figures come from the undisturbed measurements (all of them when none was);
        # lost and dups are summed over every measurement.
        md_table(out, res, title, scen, cols, ("jetstream",), summed=("lost", "dups"))

    lost = ("lost", lambda xs: str(sum(x["lost"] for x in xs)))
    dups = ("dups", lambda xs: str(sum(x["dups"] for x in xs)))
    scpu = ("server CPU µs/msg", lambda xs: span([x["server_cpu_us"] for x in xs], f1))
    ccpu = ("client CPU µs/msg", lambda xs: span([x["client_cpu_us"] for x in xs], f1))
    fills = res.get("fill", {})
    if fills:
        out += [f"**Fill: {a.replay:,} messages appended once per server for (b)** (one connection, window "
                f"{a.window}).", "", "| server | msgs/s | acked / sent | stored | server CPU µs/msg |",
                "|---|---:|---:|---:|---:|"]
        for s, f in fills.items():
            out.append(f"| {s} | {f['msgs_per_sec']:,.0f} | {f['acked']:,} / {f['sent']:,} | {f.get('stored', '–')} "
                       f"| {f['server_cpu_us']:.1f} |")
        out.append("")
    table(f"**(a) Append with durable acknowledgements: {a.append:,} messages, one connection, "
          f"{a.window} in flight.**", "append",
          [("ack p50", lambda xs: span([x["p50_ms"] for x in xs], ms)),
           ("ack p99", lambda xs: span([x["p99_ms"] for x in xs], ms)), lost, scpu, ccpu])
    table(f"**(b) Replay of {a.replay:,} stored messages from the earliest, an ack per message "
          f"(window {REPLAY_WINDOW}).**", "replay", [lost, dups, scpu, ccpu])
    table("**(b') The same replay without acks (Mote QoS 0; JetStream AckPolicy none).**", "replay0",
          [lost, dups, scpu, ccpu])
    table(f"**(c) Group of 2 members consuming with an ack per message while {a.group:,} messages over "
          f"{a.keys} keys are appended (window {GROUP_WINDOW} per member).**", "group",
          [("e2e p50", lambda xs: span([x["p50_ms"] for x in xs], ms)),
           ("e2e p99", lambda xs: span([x["p99_ms"] for x in xs], ms)), lost, dups,
           ("split", lambda xs: " / ".join(f"{v:,}" for v in xs[-1]["split"])), scpu, ccpu])
    problems = round_problems(res)
    problems += [f"fill {s}: {p}" for s, f in fills.items() for p in f.get("errors", [])]
    problems += [f"{s} log: {w}" for s, ws in res.get("warnings", {}).items() for w in ws[:5]]
    ms_all = [v for r in res["rounds"] for sc in r.values() for v in sc.values()]
    if ms_all:
        fc = sorted(v["foreign_cpu"] for v in ms_all)
        fd = sorted(v["foreign_disk_mb"] for v in ms_all)
        out.append(f"Other processes during the measurements (estimates): CPU median {fc[len(fc) // 2]:.0%}, max "
                   f"{fc[-1]:.0%} of the machine; disk writes median {fd[len(fd) // 2]:.0f} MB, max {fd[-1]:.0f} MB; "
                   f"{sum(v['attempts'] - 1 for v in ms_all)} measurement(s) repeated for that, "
                   f"{sum(1 for v in ms_all if v['busy'])} still busy after {a.retries} repetitions (kept, flagged).")
        out.append("")
    problems += busy_problems(res)
    if res.get("cut"):
        problems.append(res["cut"])
    if problems:
        out += ["**Problems (a figure with losses is not a throughput):**", ""] + [f"- {p}" for p in problems]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mote", default=os.environ.get("MOTE_BIN", os.path.join(ROOT, "target/release/mote")),
                    help="the broker (default: $MOTE_BIN, else target/release/mote)")
    ap.add_argument("--nats-server", default=shutil.which("nats-server") or "nats-server")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--append", type=int, default=200_000, help="messages in (a)")
    ap.add_argument("--replay", type=int, default=1_000_000, help="stored messages read in (b)")
    ap.add_argument("--group", type=int, default=200_000, help="messages in (c)")
    ap.add_argument("--size", type=int, default=64, help="payload bytes (at least 16)")
    ap.add_argument("--keys", type=int, default=KEYS, help="keys in (c): the topics $stream/NAME/kI")
    ap.add_argument("--window", type=int, default=256, help="publishes in flight")
    ap.add_argument("--max-foreign", type=float, default=0.10,
                    help="a measurement during which other processes used more of the CPU is repeated")
    ap.add_argument("--max-foreign-mb", type=float, default=64,
                    help="... or wrote more megabytes to disk (estimated; only with 3 %% of foreign CPU)")
    ap.add_argument("--retries", type=int, default=3, help="repetitions of a measurement on a busy machine")
    ap.add_argument("--retry-wait", type=float, default=15.0, help="seconds before repeating one")
    ap.add_argument("--budget", type=float, default=600, help="seconds: no new round once one more would pass it")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds without progress before the rest counts as lost")
    ap.add_argument("--only", default="mote,mote/fsync=never,jetstream", help="servers, comma-separated")
    ap.add_argument("--scenarios", default="append,replay,replay0,group")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 20,000 messages each, 1 round")
    ap.add_argument("--out", help="also write every measurement as JSON here")
    ap.add_argument("--from-json", help="print the tables of a run saved with --out, and exit")
    a = ap.parse_args()
    if a.from_json:
        with open(a.from_json) as f:
            saved = json.load(f)
        print(markdown(saved["results"], saved["info"], argparse.Namespace(**saved["args"]), saved["cmd"]))
        return
    if a.quick:
        a.append = a.replay = a.group = 20_000
        a.rounds = 1
    a.size = max(a.size, SEQ.size)
    only = a.only.split(",")
    scenarios = a.scenarios.split(",")
    if any(s.startswith("mote") for s in only) and not os.access(a.mote, os.X_OK):
        sys.exit(f"{a.mote} is missing: cargo build --release -p mote-broker (or --mote / MOTE_BIN)")
    if "jetstream" in only and not shutil.which(a.nats_server):
        sys.exit("nats-server is missing: apt-get install nats-server")
    cmd = "python3 benches/streams_bench.py " + " ".join(sys.argv[1:])
    info = machine_info(a)
    ctx = mp.get_context("spawn")
    started = time.monotonic()
    res = {"systems": only, "fill": {}, "rounds": [], "warnings": {}}
    servers = {}
    work = tempfile.mkdtemp(prefix="streams-bench-")
    try:
        if any(s.startswith("mote") for s in only):
            # Run a private copy: a rebuild of the original during the run changes nothing.
            mote = os.path.join(work, "mote-binary")
            shutil.copy2(a.mote, mote)
        for s in only:
            d = os.path.join(work, s.replace("/", "_"))
            if s == "mote":
                servers[s] = MoteServer(s, mote, d)
            elif s.startswith("mote/fsync="):
                servers[s] = MoteServer(s, mote, d, s.split("=", 1)[1])
            elif s == "jetstream":
                servers[s] = NatsServer(s, a.nats_server, d)
            else:
                sys.exit(f"unknown server {s}")
        fill_secs = time.monotonic() - started
        replayers = [s for s in only if s != "mote/fsync=never"]
        if "replay" in scenarios or "replay0" in scenarios:
            for s in replayers:
                res["fill"][s] = fill(servers[s], a)
                print(f"fill {s} {json.dumps(res['fill'][s])}", file=sys.stderr)
        fill_secs = time.monotonic() - started

        def measure(scen, s, srv, tag):
            if scen == "append":
                return run_append(srv, tag, a)
            if scen in ("replay", "replay0"):
                return run_replay(srv, f"{scen}-{tag}", a, scen == "replay")
            return run_group(srv, tag, a, ctx)
        run_rounds(a, servers, scenarios, started, fill_secs, measure, res,
                   skip=lambda scen, s: scen in ("replay", "replay0") and s not in replayers)
        for s, srv in servers.items():
            res["warnings"][s] = srv.warnings()[:20]
    finally:
        for srv in servers.values():
            srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    info["secs"] = round(time.monotonic() - started)
    print(markdown(res, info, a, cmd))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"info": info, "args": vars(a), "cmd": cmd, "results": res}, f, indent=1)


if __name__ == "__main__":
    main()
