"""End to end: Mote + `uvicorn app:app` + worker.py, including a worker killed mid-job.

    python3 examples/fastapi-jobs/test_example.py        # from the repository root

Needs the debug broker (``cargo build -p mote-broker``) or ``MOTE_BIN`` pointing at
another, and paho-mqtt 2.x, fastapi, uvicorn, httpx. Everything listens on 127.0.0.1 on
ports the OS picks; the broker keeps its store in a temporary directory; every child
process is reaped by its PID; the run is bounded (about 10 s, at most 60 s).
"""

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


class Child:
    """A child process (by PID only), its stdout and stderr in a file."""

    def __init__(self, test, name: str, args: list, env: dict):
        self.name, self.out = name, test.tmp / f"{name}.out"
        with open(self.out, "w") as f:
            self.proc = subprocess.Popen(args, cwd=HERE, env=env, stdin=subprocess.DEVNULL,
                                         stdout=f, stderr=subprocess.STDOUT)
        test.addCleanup(reap, self.proc)

    def text(self) -> str:
        return self.out.read_text()

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.text()}")
        return True


class FastapiJobsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mote-fastapi-jobs-"))
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        cls.mqtt_port = cls.start_mote(cls.addClassCleanup, "mote")
        cls.env = {**ENV, "MOTE_HOST": "127.0.0.1", "MOTE_PORT": cls.mqtt_port}

    @classmethod
    def start_mote(cls, cleanup, name: str, *args) -> str:
        """A broker with its store in a temporary directory; returns its MQTT port."""
        mote = binary("MOTE_BIN", "target/debug/mote")
        if not mote.exists():
            raise RuntimeError(f"{mote} is missing: cargo build -p mote-broker")
        log = open(cls.tmp / f"{name}.log", "w+")
        cleanup(log.close)
        proc = subprocess.Popen(
            [mote, "--data-dir", cls.tmp / f"{name}-data", "--mqtt", "127.0.0.1:0", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        cleanup(reap, proc)

        def listening():
            text = (cls.tmp / f"{name}.log").read_text()
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited:\n{text}")
            m = re.search(r"listening mqtt=\S+:(\d+)", text)
            return m and m.group(1)

        return wait_for(f"{name}'s listening line", listening, 10)

    def start_app(self, name: str, env: dict = None) -> httpx.Client:
        """`uvicorn app:app` on a port the OS picks; it serves once it has subscribed."""
        app = Child(self, name, [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1",
                                  "--port", "0"], env or self.env)

        def running():
            app.alive()
            m = re.search(r"Uvicorn running on (http://\S+)", app.text())
            return m and m.group(1)

        http = httpx.Client(base_url=wait_for(f"{name} to start", running, 15), timeout=15)
        self.addCleanup(http.close)
        return http

    def start_worker(self, name: str, work_ms: int) -> Child:
        w = Child(self, name, [sys.executable, HERE / "worker.py", "--port", self.mqtt_port,
                               "--work-ms", str(work_ms)], self.env)
        wait_for(f"{name} to subscribe", lambda: w.alive() and "waiting for jobs" in w.text(), 10)
        return w

    def enqueue(self, http: httpx.Client, image: str, width: int) -> str:
        r = http.post("/resize", json={"image": image, "width": width})
        self.assertEqual(r.status_code, 202, r.text)
        return r.json()["id"]

    def wait_done(self, http: httpx.Client, ids: list, timeout: float) -> dict:
        def all_done():
            got = {i: http.get(f"/jobs/{i}").json() for i in ids}
            return got if all(r.get("status") == "finished" for r in got.values()) else None
        return wait_for(f"{len(ids)} jobs to finish", all_done, timeout)

    def test_jobs_are_done_and_a_dead_workers_job_is_redone(self):
        http = self.start_app("app1")
        r = http.post("/resize", json={"image": "x.png", "width": -1})
        self.assertEqual(r.status_code, 422)  # validated before anything is enqueued
        self.assertEqual(http.get("/jobs/nosuchjob").json(), {"id": "nosuchjob", "status": "queued"})

        # 10 jobs, enqueued (durably) before any worker runs; then one worker does them all.
        jobs = {self.enqueue(http, f"photos/img{i}.jpg", 100 + i): i for i in range(10)}
        self.assertEqual(len(jobs), 10)
        self.assertEqual({http.get(f"/jobs/{j}").json()["status"] for j in jobs}, {"queued"})
        w1 = self.start_worker("worker1", work_ms=20)
        got = self.wait_done(http, list(jobs), 15)
        for job_id, i in jobs.items():
            self.assertEqual(got[job_id], {"id": job_id, "status": "finished",
                                           "thumbnail": f"photos/img{i}_w{100 + i}.jpg",
                                           "worker": w1.proc.pid, "deliveries": 1})
        self.assertEqual(w1.text().count("done "), 10, w1.text())
        os.kill(w1.proc.pid, signal.SIGTERM)
        w1.proc.wait(5)

        # A worker that takes a job and dies before acknowledging it (SIGKILL mid-job: no
        # PUBACK, no DISCONNECT): the job goes back to the queue and the next worker does it.
        slow = self.start_worker("worker2", work_ms=30_000)
        job_id = self.enqueue(http, "cat.png", 64)
        wait_for("worker2 to take the job", lambda: f"took {job_id} (delivery 1)" in slow.text(), 10)
        os.kill(slow.proc.pid, signal.SIGKILL)
        slow.proc.wait(5)
        self.assertEqual(http.get(f"/jobs/{job_id}").json()["status"], "queued")
        w3 = self.start_worker("worker3", work_ms=20)
        got = self.wait_done(http, [job_id], 15)[job_id]
        self.assertEqual(got, {"id": job_id, "status": "finished", "thumbnail": "cat_w64.png",
                               "worker": w3.proc.pid, "deliveries": 2})
        self.assertIn(f"took {job_id} (delivery 2)", w3.text())
        self.assertNotIn("done ", slow.text())

        # The results are retained: an app started now (a restart) knows them all.
        http2 = self.start_app("app2")
        self.assertEqual(http2.get(f"/jobs/{job_id}").json(), got)
        self.assertEqual({http2.get(f"/jobs/{j}").json()["status"] for j in jobs}, {"finished"})

    def test_a_refused_job_is_a_503(self):
        # A broker whose queues hold at most 2 jobs: the third gets PUBACK 0x97.
        config = self.tmp / "small.toml"
        config.write_text("[mqtt]\nmax_queued_messages = 2\n")
        port = self.start_mote(self.addCleanup, "small-mote", "--config", config)
        http = self.start_app("small-app", {**self.env, "MOTE_PORT": port})
        self.enqueue(http, "a.png", 1)
        self.enqueue(http, "b.png", 2)
        r = http.post("/resize", json={"image": "c.png", "width": 3})
        self.assertEqual(r.status_code, 503, r.text)
        self.assertIn("0x97", r.json()["detail"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
