"""End to end: Mote + the device simulator + app.py, including restarts of the app.

    python3 examples/python-backend/test_backend.py        # from the repository root

Needs the debug binaries (``cargo build -p mote-broker -p mote-device-sim``) or
``MOTE_BIN`` / ``MOTE_DEVICE_SIM`` pointing at others, and fastapi, uvicorn, httpx.
Everything listens on 127.0.0.1 with ports the OS picks; every child process is reaped,
and the whole run is bounded (about 10 s, at most 60 s).
"""

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

import httpx
import uvicorn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEADLINE = time.monotonic() + 60  # for the whole run


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
    if proc.stdout:
        proc.stdout.close()


class App:
    """app.py served by uvicorn in a thread, on a port the OS picks."""

    def __init__(self, module):
        config = uvicorn.Config(module.app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.http = httpx.Client(timeout=10)
        try:
            wait_for("the app to start", lambda: self.server.started, 10)
            port = self.server.servers[0].sockets[0].getsockname()[1]
            self.http.base_url = f"http://127.0.0.1:{port}"
            wait_for("the app's event stream", lambda: self.get("/status")["connected"], 10)
        except BaseException:
            self.stop()
            raise

    def get(self, path: str):
        r = self.http.get(path)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        """A graceful shutdown: the app saves its state."""
        self.http.close()
        self.server.should_exit = True
        self.thread.join(10)
        assert not self.thread.is_alive(), "the app did not stop"


class BackendTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        mote, cls.sim = binary("MOTE_BIN", "target/debug/mote"), binary("MOTE_DEVICE_SIM", "target/debug/mote-device-sim")
        for b in (mote, cls.sim):
            if not b.exists():
                raise RuntimeError(f"{b} is missing: cargo build -p mote-broker -p mote-device-sim")
        cls.tmp = Path(tempfile.mkdtemp(prefix="mote-backend-"))
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
        cls.http, cls.mqtt = f"http://{addrs['http']}", addrs["mqtt"]
        os.environ["MOTE_HTTP"] = cls.http
        sys.path.insert(0, str(HERE))
        cls.backend = importlib.import_module("app")

    def setUp(self):
        # Each test: its own named session and state file.
        self.backend.CLIENT_ID = f"backend-{self._testMethodName}"
        self.backend.STATE_FILE = self.tmp / f"{self._testMethodName}.json"

    def start_app(self) -> App:
        app = App(self.backend)
        self.addCleanup(lambda: app.thread.is_alive() and app.stop())
        return app

    def simulate(self, count: int, rate: int) -> subprocess.Popen:
        sim = subprocess.Popen(
            [self.sim, "--devices", "3", "--rate", str(rate), "--count", str(count), "--v5",
             "--qos", "1", "--broker", self.mqtt, "--timeout", "20"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.addCleanup(reap, sim)
        return sim

    def finish(self, sim: subprocess.Popen) -> None:
        out, _ = sim.communicate(timeout=max(1, DEADLINE - time.monotonic()))
        self.assertEqual(sim.returncode, 0, out)

    def expect(self, app: App, events: int, seq: int) -> None:
        """Every device has exactly `events` events and its last seq is `seq`."""
        want = {f"sim-{i}": (events, seq) for i in range(3)}

        def seen():
            return {k: (v["events"], v["seq"]) for k, v in app.get("/devices").items()}

        try:
            wait_for(f"{events} events per device", lambda: seen() == want, 10)
        except AssertionError:
            self.assertEqual(seen(), want)  # shows the difference
        dev = app.get("/devices/sim-1")
        self.assertEqual(dev["device"], 1)
        self.assertEqual(dev["channels"]["0"]["seq"], seq)
        self.assertEqual(dev["channels"]["0"]["type"], "f32")
        self.assertEqual(app.get("/status")["dropped"], 0)

    def test_devices_survive_restarts_without_a_gap(self):
        app = self.start_app()
        self.assertEqual(app.get("/devices"), {})
        self.assertEqual(app.http.get("/devices/sim-0").status_code, 404)
        self.finish(self.simulate(count=50, rate=50))
        self.expect(app, events=50, seq=49)

        # A graceful restart while the devices publish: the broker queues what the app
        # misses and the app resumes after the last event it applied.
        sim = self.simulate(count=100, rate=25)
        time.sleep(1)
        app.stop()
        stopped_at = json.loads(self.backend.STATE_FILE.read_text())["last_event_id"]
        time.sleep(1)
        app = self.start_app()
        self.assertEqual(app.get("/status")["resumed_from"], stopped_at)
        self.finish(sim)
        self.expect(app, events=150, seq=99)

        # A crash: the app comes back with the state it saved a while before (an older
        # Last-Event-ID); Mote replays the events after it from its ring.
        sim = self.simulate(count=100, rate=25)
        time.sleep(1.5)
        snapshot = self.backend.STATE_FILE.read_text()
        time.sleep(1)
        app.stop()
        crashed_at = json.loads(self.backend.STATE_FILE.read_text())["last_event_id"]
        self.backend.STATE_FILE.write_text(snapshot)
        app = self.start_app()
        replayed = int(crashed_at) - int(app.get("/status")["resumed_from"])
        self.assertGreater(replayed, 10)  # events the app had applied and then "forgot"
        self.finish(sim)
        self.expect(app, events=250, seq=99)

    def test_command_is_published_at_qos_1(self):
        app = self.start_app()
        with httpx.Client(base_url=self.http, timeout=10) as mote:
            params = {"filter": "mote/commands/#", "qos": "1"}
            with mote.stream("GET", "/api/v1/subscribe", params=params) as sse:
                self.assertEqual(sse.status_code, 200)  # the subscription is in place
                r = app.http.post("/command/sim-1", json={"action": "blink", "times": 3})
                self.assertEqual(r.status_code, 200, r.text)
                self.assertIn("id", r.json())
                data = next(line for line in sse.iter_lines() if line.startswith("data:"))
        msg = json.loads(data.removeprefix("data:"))
        self.assertEqual(msg["topic"], "mote/commands/sim-1")
        self.assertEqual(msg["qos"], 1)
        self.assertEqual(json.loads(msg["payload"]), {"action": "blink", "times": 3})
        self.assertEqual(msg["properties"]["content_type"], "application/json")
        # Nobody subscribed: Mote says so (202, reason 0x10) and the app passes it on.
        r = app.http.post("/command/sim-2", json={"action": "blink"})
        self.assertEqual((r.status_code, r.json()["reason_code"]), (202, 16))


if __name__ == "__main__":
    unittest.main(verbosity=2)
