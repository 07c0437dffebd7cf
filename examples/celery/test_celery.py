"""End to end: Mote + real Celery workers (`celery -A tasks worker`) on the installed
kombu transport (``python/``, package ``mote``).

    python3 -m pip install ./python               # from the repository root, once
    python3 examples/celery/test_celery.py

Needs the debug broker (``cargo build -p mote-broker``) or ``MOTE_BIN`` pointing at
another, celery 5, and the package installed into this Python (it brings paho-mqtt 2.x).
The apps import no transport: the installed package makes kombu resolve ``mote://``.
Without the package the test fails under CI=true and prints a SKIP line otherwise.
Everything listens on 127.0.0.1 on ports the OS picks; every child process is reaped by
its PID; the run is bounded (at most 90 s).
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
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEADLINE = time.monotonic() + 90  # for the whole run
# HERE on the path is for the apps (tasks.py, testing_tasks.py), not for the transport.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
sys.path.insert(0, str(HERE))
TRANSPORT = "mote.kombu:Transport"


def transport_missing() -> "str | None":
    """Why `mote://` does not resolve to the installed transport here (None if it does).

    Checked in a fresh interpreter that imports nothing but kombu, as an app would."""
    check = ("import kombu.transport as t; alias = t.TRANSPORT_ALIASES.get('mote'); "
             "import mote.kombu as m; print(alias, m.__file__)")
    run = subprocess.run([sys.executable, "-c", check], env=ENV, cwd=tempfile.gettempdir(),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        return f"the package `mote` is not importable:\n{run.stderr.strip()}"
    alias, _, where = run.stdout.strip().partition(" ")
    if alias != TRANSPORT:
        return f"kombu resolves mote:// to {alias!r}, not {TRANSPORT!r} (from {where})"
    return None


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


def reap(*procs: subprocess.Popen) -> None:
    """SIGTERM to every one still running, then waits for each (SIGKILL after 15 s)."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        p.terminate()
    for p in live:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Worker:
    """`celery -A tasks worker` (solo pool, one task at a time) in a child process, its
    log in a file; testing_tasks.py's tasks write to its own record file."""

    def __init__(self, test, name: str):
        stem = test.tmp / f"{test._testMethodName}-{name}"
        self.out, self.record = stem.with_suffix(".log"), stem.with_suffix(".record")
        env = {**ENV, "CELERY_BROKER_URL": test.url, "CELERY_EXAMPLE_RECORD": str(self.record)}
        with open(self.out, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--include", "testing_tasks",
                 "--pool", "solo", "--concurrency", "1", "--loglevel", "INFO", "-n", f"{name}@%h"],
                cwd=test.tmp, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        test.workers.append(self.proc)

    def log(self) -> str:
        return self.out.read_text()

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited:\n{self.log()}")
        return bool(re.search(r"@\S+ ready\.$", self.log(), re.M))

    def tasks(self, what: str, name: str = "tasks.add") -> list:
        """(id, rest of the line) of each `Task NAME[ID] WHAT` line of the log."""
        return re.findall(rf"Task {re.escape(name)}\[([0-9a-f-]+)\] {what}(.*)$", self.log(), re.M)

    def received_at(self, task_id: str) -> float:
        """When the log says the task was received (a Unix time)."""
        m = re.search(rf"^\[([\d-]+ [\d:]+,\d+): INFO/MainProcess\] Task \S+\[{task_id}\] received$",
                      self.log(), re.M)
        return datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else 0.0

    def records(self) -> list:
        return self.record.read_text().splitlines() if self.record.exists() else []


class CeleryOnMoteTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        mote = binary("MOTE_BIN", "target/debug/mote")
        if not mote.exists():
            raise RuntimeError(f"{mote} is missing: cargo build -p mote-broker")
        cls.tmp = Path(tempfile.mkdtemp(prefix="mote-celery-"))
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        cls.log = open(cls.tmp / "mote.log", "w+")
        cls.addClassCleanup(cls.log.close)
        cls.mote = subprocess.Popen(
            [mote, "--data-dir", cls.tmp / "data", "--mqtt", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=cls.log)
        cls.addClassCleanup(reap, cls.mote)

        def listening():
            text = (cls.tmp / "mote.log").read_text()
            if cls.mote.poll() is not None:
                raise AssertionError(f"mote exited:\n{text}")
            return re.search(r"listening mqtt=(\S+)", text)

        addr = wait_for("mote's listening line", listening, 10)[1]
        cls.url = f"mote://{addr}//"
        os.environ["CELERY_BROKER_URL"] = cls.url  # for the app imported below, the client
        import tasks
        import testing_tasks
        cls.tasks, cls.testing_tasks = tasks, testing_tasks
        cls.addClassCleanup(tasks.app.close)

    def setUp(self):
        self.workers = []
        self.addCleanup(lambda: reap(*self.workers))

    def start_workers(self, *names: str) -> list:
        ws = [Worker(self, name) for name in names]
        wait_for("the workers to be ready", lambda: all(w.ready() for w in ws), 30)
        return ws

    def test_each_task_runs_exactly_once(self):
        ws = self.start_workers("w1", "w2")
        add, refuse_once = self.tasks.add, self.testing_tasks.refuse_once
        sums = {add.delay(i, 1000 * i).id: str(1001 * i) for i in range(20)}
        refuse_once.delay("r1")  # rejected (requeued) once, then done
        sent = time.time()
        late = add.apply_async((7, 8), countdown=2).id  # via $delayed/2/$queue/celery
        sums[late] = "15"

        def succeeded():
            return [t for w in ws for t in w.tasks("succeeded in ")]
        wait_for("21 additions", lambda: len(succeeded()) >= 21, 20)
        wait_for("refuse_once done", lambda: "done r1" in [r for w in ws for r in w.records()], 10)
        time.sleep(0.5)  # a duplicate would show up by now

        done = succeeded()
        self.assertEqual(collections.Counter(i for i, _ in done), collections.Counter(sums.keys()))
        self.assertEqual({i: rest.rsplit(": ", 1)[1] for i, rest in done}, sums)
        received = [i for w in ws for i, _ in w.tasks("received")]
        self.assertEqual(collections.Counter(received), collections.Counter(sums.keys()))  # none twice
        # Prefetch 1 (Receive Maximum 1): a busy worker holds one task, the other gets its share.
        shares = [len(w.tasks("succeeded in ")) for w in ws]
        self.assertTrue(all(shares), shares)
        # The countdown task was held by Mote, never by a worker, until it was due.
        got = max(w.received_at(late) for w in ws)
        self.assertGreaterEqual(got, sent + 2 - 0.01, (sent, got))
        self.assertEqual(sorted(r for w in ws for r in w.records()), ["done r1", "refused r1"])

    def test_a_killed_workers_task_runs_on_another(self):
        (w1,) = self.start_workers("w1")
        self.testing_tasks.slow.delay("s1", 3)
        wait_for("w1 to start the slow task", lambda: w1.records(), 10)
        os.kill(w1.proc.pid, signal.SIGKILL)  # mid-task, acks_late: no PUBACK ever
        w1.proc.wait(5)
        (w2,) = self.start_workers("w2")
        wait_for("w2 to finish the slow task", lambda: "done s1" in w2.records(), 20)
        self.assertEqual(w1.records(), ["start s1 redelivered=False"])
        self.assertEqual(w2.records(), ["start s1 redelivered=True", "done s1"])

    def test_retries_wait_their_countdown_and_stop_at_max_retries(self):
        (w1,) = self.start_workers("w1")
        self.testing_tasks.flaky.delay("f1")
        self.testing_tasks.hopeless.delay("h1")
        wait_for("flaky to succeed", lambda: "done f1" in w1.records(), 20)
        wait_for("hopeless to be given up", lambda: "MaxRetriesExceededError" in w1.log(), 20)
        time.sleep(1.5)  # a try past max_retries would show up by now

        def tries(token):
            return [r.split() for r in w1.records() if r.startswith(f"try {token} ")]
        f, h = tries("f1"), tries("h1")
        self.assertEqual([t[2] for t in f], ["0", "1", "2"])
        self.assertEqual([t[2] for t in h], ["0", "1"])  # max_retries=1: one retry, no more
        for ts in ([float(t[3]) for t in f], [float(t[3]) for t in h]):
            gaps = [b - a for a, b in zip(ts, ts[1:])]
            self.assertTrue(all(g >= 0.95 for g in gaps), gaps)  # countdown=1 honoured

    def test_queue_settings_are_declared_on_mote(self):
        from kombu import Connection, Queue

        from mote import MoteRefused

        def declare(settings):
            with Connection(self.url, transport_options={"queue_settings": settings}) as conn:
                Queue("declared", channel=conn.default_channel).declare()

        declare({"visibility_timeout": 600})
        declare({"visibility_timeout": 600})  # the same again: fine
        with self.assertRaisesRegex(MoteRefused, "declaring queue declared"):
            declare({"visibility_timeout": 60})


if __name__ == "__main__":
    missing = transport_missing()
    if missing:
        if os.environ.get("CI"):
            sys.exit(f"FAIL: {missing}\nInstall it: python3 -m pip install ./python")
        print(f"SKIP: {missing}\nInstall it: python3 -m pip install ./python")
        sys.exit(0)
    unittest.main(verbosity=2)
