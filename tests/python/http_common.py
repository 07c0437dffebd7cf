"""Shared helpers of the HTTP listener's end-to-end scripts (`tests/tests/http.rs`).

The scripts follow `motepaho.py`'s convention (one JSON line per check, a final
`{"result": ...}`, exit 0 only when every check passed, a watchdog) and add:

- `parser()`: `--port` (the broker's MQTT port) and `--http HOST:PORT` (its HTTP
  listener);
- `Sse`: a Server-Sent Events reader over an httpx streaming response;
- `wait_until()`: polls a condition instead of sleeping.

HTTP goes through httpx, MQTT through paho-mqtt 2.x (MQTT 5 unless said otherwise).
"""

import json
import time

import httpx

import motepaho as mp

__all__ = ["parser", "base_url", "client", "Sse", "wait_until", "stats", "mp"]


def parser(description):
    """--port (MQTT), --http (HOST:PORT of the HTTP listener) and --timeout."""
    p = mp.parser(description, versions=False)
    p.add_argument("--http", required=True, help="HOST:PORT of the HTTP listener")
    return p


def base_url(args):
    return f"http://{args.http}"


def client(args, **kw):
    """An httpx client on the broker's HTTP listener (5 s timeouts unless given)."""
    kw.setdefault("timeout", 5.0)
    return httpx.Client(base_url=base_url(args), **kw)


def wait_until(cond, timeout, step=0.02):
    """Polls `cond()` until it is true or `timeout` seconds passed; returns its last value."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() >= end:
            return v
        time.sleep(step)


def stats(http):
    """`GET /api/v1/stats` as a dict."""
    return http.get("/api/v1/stats").json()


class Sse:
    """One `GET /api/v1/subscribe` stream, read event by event.

    Opening waits for the response headers: by then the broker has subscribed the
    stream's filters (the handler answers after the SUBACK), so a message published
    afterwards is the stream's.
    """

    def __init__(self, http, params, headers=None, read_timeout=5.0):
        self.http = http
        self.cm = http.stream(
            "GET", "/api/v1/subscribe", params=params, headers=headers or {},
            timeout=httpx.Timeout(5.0, read=read_timeout))
        self.response = self.cm.__enter__()
        self.lines = None
        self.closed = False

    @property
    def status(self):
        return self.response.status_code

    def next_event(self):
        """The next event as a dict {"event", "id", "data"} (`data` parsed as JSON when it
        is); None when the stream ended or no event came within the read timeout.
        Comments (keep-alives) are skipped."""
        if self.lines is None:
            self.lines = self.response.iter_lines()
        ev = {"event": "message", "id": None, "data": None}
        data = []
        try:
            for line in self.lines:
                if line == "":
                    if data:
                        raw = "\n".join(data)
                        try:
                            ev["data"] = json.loads(raw)
                        except ValueError:
                            ev["data"] = raw
                        return ev
                    ev = {"event": "message", "id": None, "data": None}
                    continue
                if line.startswith(":"):
                    continue
                field, _, value = line.partition(":")
                if value.startswith(" "):
                    value = value[1:]
                if field == "event":
                    ev["event"] = value
                elif field == "id":
                    ev["id"] = value
                elif field == "data":
                    data.append(value)
        except (httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError):
            return None
        return None

    def events(self, n, kind="message"):
        """Up to `n` events of `kind` (others are skipped); fewer when the stream stalls."""
        got = []
        while len(got) < n:
            e = self.next_event()
            if e is None:
                break
            if e["event"] == kind:
                got.append(e)
        return got

    def close(self):
        if not self.closed:
            self.closed = True
            self.cm.__exit__(None, None, None)
