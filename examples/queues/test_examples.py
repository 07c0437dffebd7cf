"""End to end: Mote + new_task.py / worker.py (MQTT) and sqs_style.py (HTTP).

    python3 examples/queues/test_examples.py        # from the repository root

Needs the debug broker (``cargo build -p mote-broker``) or ``MOTE_BIN`` pointing at
another, and paho-mqtt 2.x and httpx. Everything listens on 127.0.0.1 on ports the OS
picks; every child process is reaped by its PID; the run is bounded (at most 60 s).
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

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEADLINE = time.monotonic() + 60  # for the whole run
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


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


class Worker:
    """worker.py in a child process, its stdout in a file."""

    def __init__(self, test, port: str, name: str):
        self.out = test.tmp / f"{test._testMethodName}-{name}.out"
        with open(self.out, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, HERE / "worker.py", "--port", port], env=ENV,
                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        test.addCleanup(reap, self.proc)

    def lines(self, prefix: str) -> list:
        return [l.removeprefix(prefix) for l in self.out.read_text().splitlines() if l.startswith(prefix)]

    def done(self) -> list:
        return self.lines(" [x] Done ")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited:\n{self.out.read_text()}")
        return bool(self.lines(" [*] Waiting"))


class QueueExamplesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        mote = binary("MOTE_BIN", "target/debug/mote")
        if not mote.exists():
            raise RuntimeError(f"{mote} is missing: cargo build -p mote-broker")
        cls.tmp = Path(tempfile.mkdtemp(prefix="mote-queues-"))
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        cls.log = open(cls.tmp / "mote.log", "w+")
        cls.addClassCleanup(cls.log.close)
        cls.mote = subprocess.Popen(
            [mote, "--memory", "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=cls.log)
        cls.addClassCleanup(reap, cls.mote)

        def listening():
            text = (cls.tmp / "mote.log").read_text()
            got = dict(re.findall(r"listening (http|mqtt)=(\S+)", text))
            if cls.mote.poll() is not None:
                raise AssertionError(f"mote exited:\n{text}")
            return got if len(got) == 2 else None

        addrs = wait_for("mote's listening lines", listening, 10)
        cls.http = f"http://{addrs['http']}"
        cls.mqtt_port = addrs["mqtt"].rsplit(":", 1)[1]

    def run_script(self, script: str, *args: str) -> str:
        r = subprocess.run([sys.executable, HERE / script, *args], env=ENV, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=remaining())
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout

    def new_tasks(self, jobs: list) -> None:
        """new_task.py once per job, all at once."""
        procs = [subprocess.Popen([sys.executable, HERE / "new_task.py", "--port", self.mqtt_port, *job.split()],
                                  env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for job in jobs]
        for p in procs:
            self.addCleanup(reap, p)
        for p, job in zip(procs, jobs):
            out, _ = p.communicate(timeout=remaining())
            self.assertEqual((p.returncode, out), (0, f" [x] Sent {job}\n"))

    def workers(self, n: int) -> list:
        ws = [Worker(self, self.mqtt_port, f"w{i}") for i in range(n)]
        wait_for("the workers to subscribe", lambda: all(w.ready() for w in ws), 10)
        return ws

    def test_each_job_is_done_exactly_once(self):
        ws = self.workers(2)
        jobs = [f"job-{i} " + "." * (1 + i % 3) for i in range(10)]
        self.new_tasks(jobs)
        wait_for("10 jobs done", lambda: sum(len(w.done()) for w in ws) >= 10, 20)
        time.sleep(0.5)  # a duplicate would show up by now
        for w in ws:
            os.kill(w.proc.pid, signal.SIGTERM)
            w.proc.wait(5)
        done = [job for w in ws for job in w.done()]
        self.assertEqual(collections.Counter(done), collections.Counter(jobs))
        # Prefetch 1: a busy worker holds one job, so the other gets its share.
        self.assertTrue(all(w.done() for w in ws), [w.done() for w in ws])

    def test_a_dead_workers_job_goes_to_another(self):
        ws = self.workers(2)
        job = "slow-job " + "." * 30  # 3 s
        self.new_tasks([job])
        holder = wait_for("a worker to take the job",
                          lambda: next((w for w in ws if job in w.lines(" [x] Received ")), None), 10)
        survivor = ws[1 - ws.index(holder)]
        os.kill(holder.proc.pid, signal.SIGKILL)  # mid-job: no PUBACK ever
        holder.proc.wait(5)
        wait_for("the survivor to do the job", lambda: job in survivor.done(), 15)
        self.assertEqual(holder.done(), [])
        self.assertEqual(survivor.done(), [job])

    def test_sqs_style(self):
        out = self.run_script("sqs_style.py", "--http", self.http, "--queue", "sqs-test", "--count", "5")
        self.assertEqual(len(re.findall(r"^Sent message \w+$", out, re.M)), 5, out)
        got = re.findall(r"^Received and deleted message: (.*)$", out, re.M)
        self.assertEqual(sorted(got), [f"Hello {i}" for i in range(5)], out)
        with httpx.Client(base_url=self.http, timeout=10) as mote:
            r = mote.post("/api/v1/queues/sqs-test/receive", json={"max_messages": 10, "wait_seconds": 1})
            self.assertEqual((r.status_code, r.json()["messages"]), (200, []))


if __name__ == "__main__":
    unittest.main(verbosity=2)
