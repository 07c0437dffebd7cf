"""End to end: Mote + producer.py / consumer.py / group_consumer.py (docs/streams.md).

    python3 examples/python-streams/test_example.py        # from the repository root

Needs the debug broker (``cargo build -p mote-broker``) or ``MOTE_BIN`` pointing at
another, and paho-mqtt 2.x. The broker keeps its store in a temporary directory and
listens on 127.0.0.1 on a port the OS picks; every child process is reaped by its PID;
the run is bounded (at most 120 s).
"""

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import paho.mqtt.client as mqtt

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEADLINE = time.monotonic() + 120  # for the whole run
PREFETCH = 4  # the members' Receive Maximum (< KEYS: a busy member leaves keys free for a newcomer)
MESSAGES, KEYS = 200, 8


def binary(env: str, default: str) -> Path:
    path = Path(os.environ.get(env, default))
    return path if path.is_absolute() else ROOT / path


def wait_for(what: str, cond, timeout: float):
    """Polls `cond` until it returns something true; fails after `timeout` s."""
    end = min(time.monotonic() + timeout, DEADLINE)
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def remaining() -> float:
    return max(1.0, DEADLINE - time.monotonic())


class Mote:
    """`mote` with its store in `data`; restart() keeps the store and the port."""

    def __init__(self, test, tmp: Path):
        self.exe = binary("MOTE_BIN", "target/debug/mote")
        if not self.exe.exists():
            raise RuntimeError(f"{self.exe} is missing: cargo build -p mote-broker")
        self.test, self.tmp, self.data = test, tmp, tmp / "data"
        self.starts, self.port = 0, 0
        self.start()

    def start(self):
        self.starts += 1
        self.log = self.tmp / f"mote-{self.starts}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [self.exe, "--data-dir", self.data, "--mqtt", f"127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        self.test.addCleanup(reap, self.proc)

        def listening():
            text = self.log.read_text()
            if self.proc.poll() is not None:
                raise AssertionError(f"mote exited:\n{text}")
            return re.search(r"listening mqtt=\S+:(\d+)", text)

        self.port = int(wait_for("mote's listening line", listening, 15).group(1))
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "MOTE_HOST": "127.0.0.1", "MOTE_PORT": str(self.port)}

    def restart(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(15)
        self.start()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob("mote-*.log")))


class Member:
    """One run of group_consumer.py; its stdout and stderr in one file."""

    LINE = re.compile(r"^(\S+) (\d+) (\S+) (.*)$")

    def __init__(self, test, mote: Mote, name: str, run: int):
        self.name, self.run = name, run
        self.out = test.tmp / f"{name}-run{run}.out"
        with open(self.out, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, HERE / "group_consumer.py", "--stream", "orders", "--group", "billing",
                 "--member", name, "--prefetch", str(PREFETCH), "--work-ms", "25"],
                env=mote.env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        test.addCleanup(reap, self.proc)

    def lines(self) -> list:
        return self.out.read_text().splitlines()

    def printed(self) -> list:
        """[(offset, key, value)] in the order printed."""
        got = []
        for line in self.lines():
            if line.startswith("[*]"):
                continue
            m = self.LINE.match(line)
            assert m and m.group(1) == self.name, f"{self.out.name}: unexpected line {line!r}"
            got.append((int(m.group(2)), m.group(3), m.group(4)))
        return got

    def segments(self) -> list:
        """The offsets printed per key, for each connection (a `joined` line starts one)."""
        segs = []
        for line in self.lines():
            if line.startswith(f"[*] {self.name}: joined"):
                segs.append(collections.defaultdict(list))
            elif not line.startswith("[*]"):
                m = self.LINE.match(line)
                assert segs, f"{self.out.name}: a message before joining: {line!r}"
                segs[-1][m.group(3)].append(int(m.group(2)))
        return segs

    def disconnects(self) -> list:
        """How many messages had been printed at each `disconnected` line."""
        at, n = [], 0
        for line in self.lines():
            if line.startswith(f"[*] {self.name}: disconnected"):
                at.append(n)
            elif not line.startswith("[*]"):
                n += 1
        return at

    def joined(self, times: int = 1) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.out.name} exited:\n{self.out.read_text()}")
        return sum(1 for line in self.lines() if line.startswith(f"[*] {self.name}: joined")) >= times

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


class StreamsExampleTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="mote-streams-"))
        if not os.environ.get("KEEP_TMP"):  # KEEP_TMP=1: keep the outputs and logs for a look
            self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.mote = Mote(self, self.tmp)

    def run_script(self, script: str, *args: str) -> list:
        r = subprocess.run([sys.executable, HERE / script, *args], env=self.mote.env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=remaining())
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + self.mote.logs())
        return r.stdout.splitlines()

    def test_kafka_hello_world(self):
        self.assertEqual(self.run_script("producer.py"), ["Sent to test_topic: Hello, Kafka!"])
        self.run_script("producer.py", "Hello again", "Goodbye")
        self.run_script("producer.py", "--key", "k1", "keyed")  # $stream/test_topic/k1: the same stream
        want = ["test_topic:0: Hello, Kafka!", "test_topic:1: Hello again", "test_topic:2: Goodbye",
                "test_topic:3: keyed"]
        self.assertEqual(self.run_script("consumer.py", "--timeout-ms", "1500"), want, self.mote.logs())
        # Reading deletes nothing: a second reader replays the same; another starts at 2.
        self.assertEqual(self.run_script("consumer.py", "--timeout-ms", "1000"), want)
        self.assertEqual(self.run_script("consumer.py", "--timeout-ms", "1000", "--offset", "2"), want[2:])

    def produce(self, first: int, last: int) -> None:
        """Appends messages first..last-1 one after another: message i is `m{i}` with key
        `k{i % KEYS}`, so on a new stream its offset is i."""
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-producer-{first}",
                        protocol=mqtt.MQTTv5)
        c.connect("127.0.0.1", self.mote.port)
        c.loop_start()
        try:
            for i in range(first, last):
                info = c.publish(f"$stream/orders/k{i % KEYS}", f"m{i}".encode(), qos=1)
                info.wait_for_publish(min(10, remaining()))
                self.assertTrue(info.is_published(), f"message {i}: no PUBACK")
        finally:
            c.disconnect()
            c.loop_stop()

    def test_group_of_two_with_a_member_and_the_broker_restarted(self):
        self.produce(0, 120)
        a1, b = Member(self, self.mote, "a", 1), Member(self, self.mote, "b", 1)
        wait_for("both members to join", lambda: a1.joined() and b.joined(), 15)
        # Stop a mid-stream: what it had not acknowledged goes to b.
        wait_for("a to print 20 messages", lambda: len(a1.printed()) >= 20, 20)
        a1.stop()
        self.assertEqual(a1.proc.returncode, 0, a1.out.read_text())
        b_before = len(b.printed())
        # Restart the broker mid-stream, with the same store: b reconnects, the group goes on.
        seen = lambda: {o for m in (a1, b) for o, _, _ in m.printed()}
        wait_for("70 offsets printed", lambda: len(seen()) >= 70, 20)
        self.mote.restart()
        wait_for("b to rejoin", lambda: b.joined(2), 15)
        # a comes back later; then the rest is appended (its offsets go on, dense).
        a2 = Member(self, self.mote, "a", 2)
        wait_for("a to join again", lambda: a2.joined(), 15)
        self.produce(120, MESSAGES)
        members = [a1, b, a2]
        wait_for(f"all {MESSAGES} offsets printed",
                 lambda: {o for m in members for o, _, _ in m.printed()} >= set(range(MESSAGES)), 45)
        time.sleep(0.5)  # a late duplicate would show by now
        for m in (b, a2):
            m.stop()
        runs = {f"{m.name}-run{m.run}": m.printed() for m in members}
        context = "".join(f"\n--- {m.out.name}\n{m.out.read_text()}" for m in members) + "\n" + self.mote.logs()

        # Every message is the one published with that offset.
        for run, got in runs.items():
            for offset, key, value in got:
                self.assertEqual((key, value), (f"k{offset % KEYS}", f"m{offset}"), f"{run} {offset}{context}")
        # None missing.
        counts = collections.Counter(o for got in runs.values() for o, _, _ in got)
        self.assertEqual(set(counts), set(range(MESSAGES)), context)
        # Repeats only of what was delivered and not acknowledged before a stop: a message
        # whose first print is among the last PREFETCH before a's first run was stopped
        # (SIGTERM) or before a member's connection was closed by the broker's restart.
        stops = {"a-run1": [len(runs["a-run1"])]}
        for m in members:
            stops.setdefault(f"{m.name}-run{m.run}", []).extend(m.disconnects())
        first_at = {}
        for run, got in runs.items():
            for i, (o, _, _) in enumerate(got):
                first_at.setdefault(o, (run, i))
        repeats = {o: n - 1 for o, n in counts.items() if n > 1}
        for o in repeats:
            run, i = first_at[o]
            self.assertTrue(any(at - PREFETCH <= i < at for at in stops[run]),
                            f"offset {o} printed again, first printed by {run} as its message {i}, "
                            f"not within {PREFETCH} before a stop ({stops}){context}")
        self.assertLessEqual(sum(repeats.values()), 2 * PREFETCH, f"repeats {repeats}{context}")
        # Per key, in offset order within each connection of each member.
        for m in members:
            for n, seg in enumerate(m.segments()):
                for key, offsets in seg.items():
                    self.assertEqual(offsets, sorted(set(offsets)),
                                     f"{m.out.name} connection {n + 1} key {key}{context}")
        # The two members shared the work before the stop.
        self.assertGreater(b_before, 0, f"b had printed nothing when a was stopped{context}")
        # ... and after a came back (keys without messages in flight move to it).
        self.assertTrue(runs["a-run2"], f"a printed nothing after it came back{context}")
        print(f"\n  printed: a-run1 {len(runs['a-run1'])}, b {len(runs['b-run1'])}, a-run2 "
              f"{len(runs['a-run2'])}; repeated offsets {sorted(repeats)}", file=sys.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
