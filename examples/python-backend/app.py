"""A FastAPI backend fed by Mote: the latest sensor value of every device, and commands.

    MOTE_HTTP=http://127.0.0.1:8083 uvicorn app:app --port 8000

- A background task reads Mote's Server-Sent Events (``GET /api/v1/subscribe``) with a
  named session (``client_id``): while this app is down, the broker queues the events
  for it, and on reconnect ``Last-Event-ID`` resumes exactly after the last one applied.
  The id and the device table are saved together in ``STATE_FILE`` (at most once a
  second and at shutdown), so a restart neither loses nor double-counts an event.
- ``GET /devices``: the latest value per device and channel; ``GET /devices/{name}``.
  A device is named by the last level of its topic (``mote/events/sim-0`` -> ``sim-0``).
- ``POST /command/{name}`` publishes the JSON body to ``mote/commands/{name}`` at QoS 1
  through Mote's HTTP publish API and returns Mote's answer (200 once the broker has
  it; 202 when no one is subscribed).
"""

import asyncio
import json
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI, HTTPException, Response

MOTE_HTTP = os.environ.get("MOTE_HTTP", "http://127.0.0.1:8083")
CLIENT_ID = os.environ.get("MOTE_CLIENT_ID", "python-backend")  # one per backend instance
FILTER = os.environ.get("MOTE_FILTER", "mote/events/#")
STATE_FILE = Path(os.environ.get("STATE_FILE", "backend-state.json"))

log = logging.getLogger("uvicorn.error")
# What survives a restart; `connected` and `resumed_from` are for /status only.
state = {"last_event_id": None, "devices": {}, "dropped": 0}
status = {"connected": False, "resumed_from": None}


def load_state() -> None:
    state.update(last_event_id=None, devices={}, dropped=0)
    if STATE_FILE.exists():
        state.update(json.loads(STATE_FILE.read_text()))


def save_state() -> None:
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(STATE_FILE)  # atomic: the id and the table always match


def apply(msg: dict) -> None:
    """One `message` event: update the device's latest values."""
    if msg.get("payload_encoding") != "json":  # not a SensorEvent (or one that did not decode)
        log.warning("skipped %s (%s)", msg["topic"], msg.get("decode_error") or msg["payload_encoding"])
        return
    ev = msg["payload"]  # {"device","seq","timestamp_ms","channel","value":{"type","value"}}
    name = msg["topic"].rsplit("/", 1)[-1]
    dev = state["devices"].setdefault(name, {"device": ev["device"], "events": 0, "channels": {}})
    dev.update(events=dev["events"] + 1, seq=ev["seq"], timestamp_ms=ev["timestamp_ms"])
    dev["channels"][str(ev["channel"])] = {**ev["value"], "seq": ev["seq"], "timestamp_ms": ev["timestamp_ms"]}


async def sse_events(response: httpx.Response):
    """Yields (event, id, data) from a text/event-stream."""
    event, id_, data = "message", None, []
    async for line in response.aiter_lines():
        if not line:  # a blank line ends an event
            if data:
                yield event, id_, "\n".join(data)
            event, id_, data = "message", None, []
        elif not line.startswith(":"):  # ":" starts a comment (keep-alive)
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "id":
                id_ = value
            elif field == "data":
                data.append(value)


async def consume() -> None:
    """Follows the event stream forever, reconnecting after 1 s on any failure."""
    params = {"filter": FILTER, "client_id": CLIENT_ID}
    async with httpx.AsyncClient(base_url=MOTE_HTTP, timeout=httpx.Timeout(10, read=60)) as http:
        while True:
            headers = {}
            if state["last_event_id"] is not None:
                headers["Last-Event-ID"] = state["last_event_id"]
            try:
                async with http.stream("GET", "/api/v1/subscribe", params=params, headers=headers) as r:
                    r.raise_for_status()
                    status.update(connected=True, resumed_from=state["last_event_id"])
                    log.info("subscribed to %s as %s (after event %s)", FILTER, CLIENT_ID, state["last_event_id"])
                    stream_dropped = 0
                    async for event, id_, data in sse_events(r):
                        if event == "message":
                            apply(json.loads(data))
                            state["last_event_id"] = id_
                        elif event == "dropped":  # Mote could not keep everything for us
                            d = json.loads(data)
                            if d.get("reason") == "resume":  # lost while we were away
                                state["dropped"] += d["dropped"]
                            else:  # QoS 0 messages dropped: a running count for this stream
                                state["dropped"] += d["dropped"] - stream_dropped
                                stream_dropped = d["dropped"]
                            log.warning("Mote dropped events: %s", data)
            except (httpx.HTTPError, ValueError) as e:
                log.warning("event stream: %r; reconnecting in 1 s", e)
            status["connected"] = False
            await asyncio.sleep(1)


async def save_every_second() -> None:
    saved = None
    while True:
        await asyncio.sleep(1)
        if state["last_event_id"] != saved:
            save_state()
            saved = state["last_event_id"]


@asynccontextmanager
async def lifespan(app: FastAPI):
    load_state()
    app.state.mote = httpx.AsyncClient(base_url=MOTE_HTTP, timeout=10)
    tasks = [asyncio.create_task(consume()), asyncio.create_task(save_every_second())]
    yield
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    save_state()
    await app.state.mote.aclose()


app = FastAPI(title="Mote devices", lifespan=lifespan)


@app.get("/devices")
async def devices() -> dict:
    return state["devices"]


@app.get("/devices/{name}")
async def device(name: str) -> dict:
    if name not in state["devices"]:
        raise HTTPException(404, f"no events from {name!r} yet")
    return state["devices"][name]


@app.post("/command/{name}")
async def command(name: str, body: dict, response: Response) -> dict:
    r = await app.state.mote.post("/api/v1/publish", json={
        "topic": f"mote/commands/{name}",
        "payload": json.dumps(body),
        "qos": 1,
        "properties": {"content_type": "application/json"},
    })
    response.status_code = r.status_code  # 200 {"id"}, 202 nobody subscribed, 4xx/5xx {"code","message"}
    return r.json()


@app.get("/status")
async def get_status() -> dict:
    return {**status, "last_event_id": state["last_event_id"], "dropped": state["dropped"]}
