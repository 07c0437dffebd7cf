"""A fresh pip install of ./python, then an unchanged Celery app on `mote://` against Mote.

    cargo build -p mote-broker                    # MOTE_BIN overrides target/debug/mote
    python3 python/tests/test_install.py          # from anywhere

It makes a new virtualenv (no system site-packages: celery, kombu and paho-mqtt come
from the package's own requirements, through pip), installs ``python/[celery]`` into it
(a wheel build, not editable), and runs, with that venv's Python and outside the
repository:

- a program importing nothing: neither kombu nor paho-mqtt gets loaded;
- a program importing only ``kombu.transport``: ``mote`` is in its TRANSPORT_ALIASES,
  pointing at the installed ``mote.kombu`` (not the repository's copy);
- a Celery app file that only does ``Celery("app", broker="mote://127.0.0.1:PORT")`` (no
  other import) against a real broker on a port the OS picks: a ``celery worker`` of the
  app runs ``add.delay(2, 40)`` sent by another process, once, and the task writes
  ``2 + 40 = 42`` to a file the test reads (Celery has no result backend on Mote).

Needs pip to reach PyPI (or a find-links directory) for hatchling, celery, kombu and
paho-mqtt. Everything listens on 127.0.0.1; every child process is reaped by its PID (a
pip that runs over its time is killed with its process group); at most 240 s in all.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent  # python/
ROOT = PACKAGE.parent
DEADLINE = time.monotonic() + 240  # for the whole run
# The children must not find the repository's copy, nor anything PYTHONPATH adds.
ENV = {k: v for k, v in os.environ.items()
       if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
ENV["PYTHONUNBUFFERED"] = "1"


def left(cap: float) -> float:
    return max(0.1, min(cap, DEADLINE - time.monotonic()))


def run(cmd, cwd, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Runs `cmd` in its own process group; kills that group if it runs over `timeout`."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)
    try:
        out, _ = proc.communicate(timeout=left(timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this child leads: pip and its builds
        out, _ = proc.communicate()
        raise AssertionError(f"{cmd[:4]} ran over {timeout} s:\n{out}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


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
    """SIGTERM if still running, then waits (SIGKILL after 15 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


APP = '''\
from celery import Celery

app = Celery("app", broker="{url}")


@app.task
def add(x, y):
    with open({result!r}, "a") as f:
        f.write(f"{{x}} + {{y}} = {{x + y}}\\n")
    return x + y
'''

# Run by the venv's Python in a directory holding nothing of Mote's.
PROBE = textwrap.dedent('''\
    import json, sys
    before = sorted(m for m in ("kombu", "paho", "mote", "mote.kombu") if m in sys.modules)
    import kombu.transport
    alias = kombu.transport.TRANSPORT_ALIASES.get("mote")
    after = sorted(m for m in ("paho", "mote", "mote.kombu") if m in sys.modules)
    import _mote_kombu_alias, mote, mote.kombu
    from mote import MoteRefused
    print(json.dumps({"before": before, "alias": alias, "after": after,
                      "mote": mote.__file__, "hook": _mote_kombu_alias.__file__,
                      "refused": MoteRefused.__module__,
                      "transport": kombu.transport.resolve_transport("mote").__module__,
                      "loader": type(kombu.transport.__loader__).__name__}))
''')


class FreshInstallTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        mote = Path(os.environ.get("MOTE_BIN", "target/debug/mote"))
        mote = mote if mote.is_absolute() else ROOT / mote
        if not mote.exists():
            raise RuntimeError(f"{mote} is missing: cargo build -p mote-broker")
        cls.tmp = Path(tempfile.mkdtemp(prefix="mote-install-"))
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)

        venv = cls.tmp / "venv"
        made = run([sys.executable, "-m", "venv", str(venv)], cls.tmp, 60)
        assert made.returncode == 0, made.stdout
        cls.python = venv / "bin" / "python"
        started = time.monotonic()
        pip = run([str(cls.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                   f"{PACKAGE}[celery]"], cls.tmp, 180)
        assert pip.returncode == 0, f"pip install {PACKAGE}[celery] failed:\n{pip.stdout}"
        print(f"\n(fresh venv + pip install: {time.monotonic() - started:.1f} s)", file=sys.stderr)
        purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
        cls.site = Path(run([str(cls.python), "-c", purelib], cls.tmp, 30).stdout.strip())

        cls.log = open(cls.tmp / "mote.log", "w+")
        cls.addClassCleanup(cls.log.close)
        cls.mote = subprocess.Popen(
            [mote, "--memory", "--mqtt", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=cls.log)
        cls.addClassCleanup(reap, cls.mote)

        def listening():
            text = (cls.tmp / "mote.log").read_text()
            if cls.mote.poll() is not None:
                raise AssertionError(f"mote exited:\n{text}")
            return re.search(r"listening mqtt=(127\.0\.0\.1:\d+)", text)

        cls.addr = wait_for("mote's listening line", listening, 10)[1]

    def test_installed_files(self):
        files = {p.name for p in self.site.iterdir()}
        self.assertLessEqual({"mote", "mote_kombu.pth", "_mote_kombu_alias.py"}, files)
        pth = (self.site / "mote_kombu.pth").read_text().strip()
        self.assertEqual(pth, "import _mote_kombu_alias")
        dist = next(self.site.glob("mote_mqtt-*.dist-info"))
        direct = json.loads((dist / "direct_url.json").read_text())
        self.assertFalse(direct.get("dir_info", {}).get("editable", False), direct)

    def test_nothing_is_imported_at_start(self):
        got = run([str(self.python), "-c", "import sys; print(sorted(m for m in sys.modules "
                   "if m.split('.')[0] in ('kombu', 'paho', 'mote', 'celery')))"], self.tmp, 30)
        self.assertEqual((got.returncode, got.stdout.strip()), (0, "[]"), got.stdout)

    def test_kombu_resolves_mote_without_an_import(self):
        got = run([str(self.python), "-c", PROBE], self.tmp, 30)
        self.assertEqual(got.returncode, 0, got.stdout)
        probe = json.loads(got.stdout.strip().splitlines()[-1])
        self.assertEqual(probe["before"], [])
        self.assertEqual(probe["alias"], "mote.kombu:Transport")
        self.assertEqual(probe["after"], [])  # resolving the name imports it, not kombu's import
        self.assertEqual(probe["transport"], "mote.kombu")
        self.assertEqual(probe["refused"], "mote.kombu")
        self.assertEqual(probe["loader"], "SourceFileLoader")  # the hook left no trace
        for key in ("mote", "hook"):
            where = Path(probe[key])
            self.assertTrue(where.is_relative_to(self.site), (key, where, self.site))

    def test_an_unchanged_celery_app_runs_a_task(self):
        app_dir = self.tmp / "app"
        app_dir.mkdir()
        result = self.tmp / "result.txt"
        url = f"mote://{self.addr}"
        (app_dir / "app.py").write_text(APP.format(url=url, result=str(result)))

        out = self.tmp / "worker.log"
        with open(out, "w") as f:
            worker = subprocess.Popen(
                [str(self.python), "-m", "celery", "-A", "app", "worker", "--pool", "solo",
                 "--concurrency", "1", "--loglevel", "INFO", "-n", "w1@%h"],
                cwd=app_dir, env=ENV, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        self.addCleanup(reap, worker)

        def ready():
            if worker.poll() is not None:
                raise AssertionError(f"the worker exited:\n{out.read_text()}")
            return re.search(r"@\S+ ready\.$", out.read_text(), re.M)
        wait_for("the worker to be ready", ready, 60)
        self.assertRegex(out.read_text(), rf"Connected to mote://\S*@{re.escape(self.addr)}//")

        sent = run([str(self.python), "-c",
                    "from app import add, app\n"
                    "print(add.delay(2, 40).id)\n"
                    "print(type(app.connection_for_write().transport).__module__)"], app_dir, 60)
        self.assertEqual(sent.returncode, 0, sent.stdout)
        task_id, module = sent.stdout.split()[-2:]
        self.assertEqual(module, "mote.kombu")

        wait_for("the task's result", lambda: result.exists() and result.read_text(), 30)
        line = rf"Task app\.add\[{re.escape(task_id)}\] succeeded in \S+: (\d+)$"
        done = wait_for("the worker's success line",
                        lambda: re.search(line, out.read_text(), re.M), 10)
        self.assertEqual(done[1], "42")
        time.sleep(0.5)  # a second run would show up by now
        self.assertEqual(result.read_text(), "2 + 40 = 42\n")


if __name__ == "__main__":
    unittest.main(verbosity=2)
