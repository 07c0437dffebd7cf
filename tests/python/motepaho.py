"""Shared helpers of the paho-mqtt 2.x end-to-end scripts.

Every script takes `--port` (and usually `--version 311|5`), prints one JSON object per
line, `{"check": NAME, "ok": BOOL, ...}` for each assertion, and a final
`{"result": "pass"|"fail"}`; it exits 0 only when every check passed. A watchdog ends
the process (exit 3) when a script runs past its deadline, so a script always ends.

Clients are pumped by hand (`Client.loop`) from the main thread: no background threads,
no automatic reconnects, deterministic ordering of callbacks.
"""

import argparse
import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

__all__ = [
    "Client",
    "PacketTypes",
    "Properties",
    "ReasonCode",
    "SubscribeOptions",
    "Run",
    "parser",
    "pump",
    "props_dict",
    "forget",
    "settle",
]

HOST = "127.0.0.1"


def parser(description, versions=True):
    """An argument parser with --port, --version and --timeout."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, required=True)
    if versions:
        p.add_argument("--version", choices=["311", "5"], default="5")
    p.add_argument("--timeout", type=float, default=15.0, help="watchdog, seconds")
    return p


def emit(obj):
    sys.stdout.write(json.dumps(obj, default=repr) + "\n")
    sys.stdout.flush()


class Run:
    """Collects checks; arms the watchdog; `finish()` prints the result and exits."""

    def __init__(self, args, name):
        self.name = name
        self.failed = 0
        self.checks = 0
        deadline = args.timeout

        def watchdog():
            emit({"check": "watchdog", "ok": False, "detail": f"{name}: no result after {deadline}s"})
            emit({"result": "fail"})
            os._exit(3)

        t = threading.Timer(deadline, watchdog)
        t.daemon = True
        t.start()

        def excepthook(kind, value, tb):
            import traceback
            traceback.print_exception(kind, value, tb)
            emit({"check": "exception", "ok": False, "error": f"{kind.__name__}: {value}"})
            emit({"result": "fail"})
            sys.stdout.flush()
            os._exit(2)

        sys.excepthook = excepthook

    def check(self, name, ok, **detail):
        self.checks += 1
        if not ok:
            self.failed += 1
        obj = {"check": name, "ok": bool(ok)}
        obj.update(detail)
        emit(obj)
        return ok

    def eq(self, name, got, expected, **detail):
        return self.check(name, got == expected, got=got, expected=expected, **detail)

    def info(self, **kv):
        emit({"info": kv})

    def finish(self):
        ok = self.failed == 0 and self.checks > 0
        emit({"result": "pass" if ok else "fail", "checks": self.checks, "failed": self.failed})
        sys.stdout.flush()
        os._exit(0 if ok else 1)


def props_dict(props):
    """The properties paho decoded, as a plain dict (absent ones left out)."""
    if props is None:
        return {}
    out = {}
    for name in props.names.keys():
        attr = name.replace(" ", "")
        if hasattr(props, attr):
            v = getattr(props, attr)
            if isinstance(v, (bytes, bytearray)):
                v = v.decode("latin-1")
            out[attr] = v
    return out


class Message:
    """A received message, copied out of paho's object."""

    def __init__(self, m):
        self.topic = m.topic
        self.payload = bytes(m.payload)
        self.qos = m.qos
        self.retain = bool(m.retain)
        self.dup = bool(m.dup)
        self.mid = m.mid
        self.props = props_dict(getattr(m, "properties", None))
        self.at = time.monotonic()

    def text(self):
        return self.payload.decode("utf-8", "replace")

    def as_json(self):
        return {
            "topic": self.topic,
            "payload": self.text(),
            "qos": self.qos,
            "retain": self.retain,
            "props": self.props,
        }


class Client:
    """A paho client plus everything its callbacks saw."""

    def __init__(self, client_id, version, clean=True, will=None, keepalive=60,
                 connect_props=None, session_expiry=None, manual_ack=False):
        self.v5 = version == "5"
        self.client_id = client_id
        self.clean = clean
        self.keepalive = keepalive
        kw = {}
        if not self.v5:
            kw["clean_session"] = clean
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
            **kw,
        )
        self.connect_props = connect_props
        if self.v5 and session_expiry is not None:
            if self.connect_props is None:
                self.connect_props = Properties(PacketTypes.CONNECT)
            self.connect_props.SessionExpiryInterval = session_expiry
        if will is not None:
            self.c.will_set(**will)
        self.messages = []
        self.connack = None  # (session_present, reason code int, props dict)
        self.disconnects = []  # (from_server, reason code int, props dict)
        self.subacks = {}  # mid -> list of reason code ints
        self.unsubacks = {}  # mid -> list of reason code ints
        self.acked = set()  # mids of completed publishes
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_publish = self._on_publish
        self.c.on_log = self._on_log
        self.log = []  # paho's log lines, in order (packets received and sent)
        self.closed = False

    # callbacks
    def _on_connect(self, c, u, flags, rc, props):
        self.connack = (bool(flags.session_present), rc.value, props_dict(props))

    def _on_message(self, c, u, m):
        self.messages.append(Message(m))

    def _on_disconnect(self, c, u, flags, rc, props):
        self.disconnects.append(
            (bool(flags.is_disconnect_packet_from_server), rc.value, props_dict(props)))
        self.closed = True

    def _on_subscribe(self, c, u, mid, rcs, props):
        self.subacks[mid] = [r.value for r in rcs]

    def _on_unsubscribe(self, c, u, mid, rcs, props):
        self.unsubacks[mid] = [r.value for r in rcs]

    def _on_publish(self, c, u, mid, rc, props):
        self.acked.add(mid)

    def _on_log(self, c, u, level, buf):
        self.log.append(buf)

    # actions
    def connect(self, port, wait=True, timeout=5.0):
        kw = {}
        if self.v5:
            kw["clean_start"] = self.clean
            kw["properties"] = self.connect_props
        self.connack = None
        self.closed = False
        self.c.connect(HOST, port, keepalive=self.keepalive, **kw)
        if wait:
            pump([self], lambda: self.connack is not None or self.closed, timeout)
            if self.connack is None:
                raise RuntimeError(f"{self.client_id}: no CONNACK within {timeout}s")
        return self.connack

    def subscribe(self, topic, qos=0, options=None, props=None, timeout=5.0):
        """Subscribes one filter (or a list of (filter, qos/options)); waits for SUBACK."""
        if isinstance(topic, list):
            rc, mid = self.c.subscribe(topic, properties=props)
        elif options is not None:
            rc, mid = self.c.subscribe(topic, options=options, properties=props)
        else:
            rc, mid = self.c.subscribe(topic, qos, properties=props)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"subscribe failed locally: {rc}")
        pump([self], lambda: mid in self.subacks or self.closed, timeout)
        if mid not in self.subacks:
            raise RuntimeError(f"{self.client_id}: no SUBACK for {topic!r}")
        return self.subacks[mid]

    def unsubscribe(self, topic, timeout=5.0):
        rc, mid = self.c.unsubscribe(topic)
        pump([self], lambda: mid in self.unsubacks or self.closed, timeout)
        if mid not in self.unsubacks:
            raise RuntimeError(f"{self.client_id}: no UNSUBACK for {topic!r}")
        return self.unsubacks[mid]

    def publish(self, topic, payload, qos=0, retain=False, props=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        return info.mid

    def publish_wait(self, topic, payload, qos=0, retain=False, props=None, timeout=5.0):
        """Publishes and, for QoS 1/2, waits for the flow to complete."""
        mid = self.publish(topic, payload, qos, retain, props)
        if qos > 0:
            pump([self], lambda: mid in self.acked or self.closed, timeout)
            if mid not in self.acked:
                raise RuntimeError(f"{self.client_id}: publish {mid} on {topic} not acknowledged")
        else:
            pump([self], lambda: False, 0.05)
        return mid

    def disconnect(self, reasoncode=None, props=None):
        self.c.disconnect(reasoncode=reasoncode, properties=props)
        pump([self], lambda: self.closed, 2.0)
        self.closed = True

    def drop(self):
        """Closes the socket without DISCONNECT (an abnormal end)."""
        sock = self.c.socket()
        if sock is not None:
            try:
                import socket
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.closed = True

    def take(self):
        """The messages received so far, emptying the list."""
        m, self.messages = self.messages, []
        return m


def forget(client_id, version, port):
    """Ends any session of `client_id`: a Clean Start connect, then DISCONNECT."""
    c = Client(client_id, version)
    c.connect(port)
    c.disconnect()
    # Give the broker time to handle that DISCONNECT before the caller's next CONNECT
    # with this id: one overtaking it is a takeover instead, a different path.
    time.sleep(0.3)


def pump(clients, until, timeout):
    """Runs the network loop of every open client until `until()` or `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        if until():
            return True
        if time.monotonic() >= end:
            return until()
        live = [c for c in clients if not c.closed and c.c.socket() is not None]
        if not live:
            time.sleep(0.01)
            continue
        for c in live:
            rc = c.c.loop(timeout=0.01)
            if rc != mqtt.MQTT_ERR_SUCCESS and c.c.socket() is None:
                c.closed = True


def settle(clients, seconds):
    """Pumps for `seconds` regardless (to see that nothing more arrives)."""
    pump(clients, lambda: False, seconds)
