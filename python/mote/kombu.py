"""A kombu transport for Mote's work queues over MQTT 5 (paho-mqtt 2.x): Celery on Mote.

    app = Celery('tasks', broker='mote://127.0.0.1:1883//')   # no import of this module

Installed with pip (``pip install ./python``), the package makes kombu resolve the URL
scheme ``mote://`` to ``mote.kombu:Transport`` in every program, without any import:
``_mote_kombu_alias.py``, run at interpreter start by a ``.pth`` file, adds
``kombu.transport.TRANSPORT_ALIASES['mote']`` as soon as ``kombu.transport`` is imported.
Where no ``.pth`` file is read (the package on ``PYTHONPATH`` after ``pip install
--target``, a frozen app, ``python -S``), ``import mote.kombu`` adds the alias too, and
``broker_transport = 'mote.kombu:Transport'`` needs no alias at all.

What goes over the wire (``docs/queues.md``):

- A message for kombu queue Q is PUBLISHed at QoS 1 to ``$queue/Q``. Its payload is the
  kombu message as JSON, the way kombu's virtual transports store it. The publish
  returns once Mote's PUBACK says the job is durable; a PUBACK of 0x80 or more raises
  ``MoteRefused`` (0x97: the queue is full), and so does 0x10 (the queue does not
  exist and ``[queues] auto_create`` is off).
- A message with a Celery ``eta`` (``countdown``, ``retry(countdown=...)``) goes to
  ``$delayed/SECONDS/$queue/Q``: Mote keeps it and enqueues it when it is due, so no
  worker holds it meanwhile and no visibility timeout runs out on it
  (``delayed_publish=False`` turns this off).
- A consumer SUBSCRIBEs to ``$queue/Q`` at QoS 1 with manual acks. kombu's
  ``delivery_tag`` maps to the MQTT packet id: ``message.ack()`` is the PUBACK, so a job
  is done only once Celery acks it (after the task with ``task_acks_late``). A worker
  that dies first leaves its jobs to Mote, which gives them to another worker.
- ``message.reject(requeue=True)`` publishes ``$queue/$nack/PACKET_ID`` and then the
  PUBACK: the job goes back to the queue, one delivery more (paho 2.x cannot send a
  v5 PUBACK reason code). ``reject(requeue=False)`` is a plain PUBACK: the job is gone.
- The prefetch (Celery's ``worker_prefetch_multiplier`` x concurrency) is the
  connection's Receive Maximum, so Mote itself never sends more unacknowledged jobs
  than that (Mote caps it at the queue's ``prefetch`` setting, 10 by default).
- Cancelling a consumer grants it credit 0 (``$queue/$credit/Q/0``): it is sent nothing
  more, and keeps (and may still ack) the jobs it holds, as a Celery warm shutdown
  needs. A job not yet handed to Celery is refused right away.
- ``delivery_info['redelivered']`` is true when Mote says so (``mote-delivery-count``
  > 1, or the DUP flag); ``delivery_info['mote_delivery_count']`` is the count.

Transport options (Celery: ``broker_transport_options``): ``keepalive`` (s, 60),
``connect_timeout`` (s, 10), ``publish_timeout`` (s, 10), ``delayed_publish`` (True),
``queue_settings`` (a dict such as ``{"visibility_timeout": 3600}``: every queue this
connection declares is declared on Mote with it, through ``$admin/queue/NAME``; a
queue declared before with other settings raises ``MoteRefused``).

Not supported: fanout exchanges (so no Celery remote control, events or ``rpc://``
results), priorities, purge, queue sizes (``_size`` says 0), TLS, ``basic_get`` on a
queue nobody consumes. Exchanges and bindings live in the process that declares them,
as with kombu's other virtual transports; a direct exchange nobody bound in this
process routes by its routing key, as the default exchange does.
"""

from __future__ import annotations

import hashlib
import math
import re
import socket
import threading
import uuid
from collections import deque
from datetime import datetime, timezone
from itertools import count
from queue import Empty
from time import monotonic

import paho.mqtt
import paho.mqtt.client as mqtt
from kombu.exceptions import ChannelError
from kombu.exceptions import ConnectionError as KombuConnectionError
from kombu.log import get_logger
from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.utils.json import dumps, loads
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ("Transport", "Channel", "MoteRefused", "ConnectionLost", "mote_queue_name")

logger = get_logger(__name__)

QUEUE_PREFIX = "$queue/"
ADMIN_QUEUE_PREFIX = "$admin/queue/"
NO_MATCHING_SUBSCRIBERS = 0x10
ABSOLUTE_DELAY = 42_949_670  # $delayed/N with N at least this is a Unix time
UNREADABLE_RETRY_SECS = 30  # a job that is no kombu message comes back after this
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class MoteRefused(ChannelError):
    """Mote refused a PUBLISH or a SUBSCRIBE (its reason code is in the message)."""


class ConnectionLost(KombuConnectionError):
    """The MQTT connection to Mote is gone (or never came up)."""


def mote_queue_name(queue: str) -> str:
    """The Mote queue name for kombu queue `queue`.

    A valid Mote name (1 to 64 of ``A-Z a-z 0-9 _ . -``) is kept as it is; any other is
    made valid and given a hash suffix, so two kombu names never share a queue.
    """
    if _NAME.fullmatch(queue):
        return queue
    digest = hashlib.sha1(queue.encode()).hexdigest()[:16]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', queue)[:47]}.{digest}"


def _delay_secs(message: dict) -> int | None:
    """Whole seconds until the Celery ``eta`` of `message`, rounded up; None if none."""
    eta = (message.get("headers") or {}).get("eta")
    if not eta:
        return None
    try:
        due = datetime.fromisoformat(eta)
    except (TypeError, ValueError):
        return None
    if due.tzinfo is None:  # Celery sends aware times; a naive one is left to the worker
        return None
    secs = math.ceil(due.timestamp() - datetime.now(timezone.utc).timestamp())
    if secs <= 0:
        return None
    return math.ceil(due.timestamp()) if secs >= ABSOLUTE_DELAY else secs


def _reason(code, properties) -> str:
    text = f"{code} (0x{int(getattr(code, 'value', code)):02x})"
    why = getattr(properties, "ReasonString", None) if properties is not None else None
    return f"{text}: {why}" if why else text


class _Mqtt:
    """One MQTT 5 connection to Mote, its network loop in paho's thread.

    Nothing reconnects: a lost connection makes `alive` false, and kombu (Celery)
    opens a new one, as it does for any transport.
    """

    def __init__(self, transport, receive_maximum: int | None):
        self.transport = transport
        self.receive_maximum = receive_maximum
        self.client_id = f"kombu{uuid.uuid4().hex[:16]}"
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
            protocol=mqtt.MQTTv5, manual_ack=True, reconnect_on_failure=False)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = transport._on_message
        self.connected = threading.Event()
        self.error: str | None = None  # why the connection is not (or no longer) usable
        self.pubacks: dict = {}  # packet id -> (code, text), for the publisher to pick up
        self.subacks: dict = {}
        self.acked = threading.Condition()
        self.subscribed: set = set()  # kombu queue names
        self.paused: set = set()  # subscribed, with credit 0

    # -- paho callbacks (paho's thread) --

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.error = f"CONNECT refused: {_reason(reason_code, properties)}"
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self.error is None:
            self.error = f"connection lost: {_reason(reason_code, properties)}"
        self.connected.set()
        with self.acked:
            self.acked.notify_all()
        self.transport._wake()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        # Kept until the publisher picks it up, or the packet id is used again.
        self.pubacks[mid] = (reason_code.value, _reason(reason_code, properties))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.acked:
            self.subacks[mid] = (reason_codes, properties)
            self.acked.notify_all()

    # -- used by the transport (any thread) --

    @property
    def alive(self) -> bool:
        return self.connected.is_set() and self.error is None

    def check(self) -> None:
        if not self.alive:
            raise ConnectionLost(self.error or "not connected to Mote")

    def connect(self, host: str, port: int, conninfo, keepalive: int, timeout: float):
        if conninfo.userid or conninfo.password:
            self.client.username_pw_set(conninfo.userid, conninfo.password)
        props = Properties(PacketTypes.CONNECT)
        if self.receive_maximum:
            props.ReceiveMaximum = self.receive_maximum
        self.client.connect_timeout = timeout
        self.client.connect(host, port, keepalive, clean_start=True, properties=props)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.error = f"no CONNACK from {host}:{port} within {timeout} s"
        if not self.alive:
            self.close()
            raise ConnectionLost(self.error)

    def publish(self, topic: str, payload, timeout: float, retain: bool = False):
        """PUBLISH at QoS 1 and wait for the PUBACK: (reason code, text)."""
        self.check()
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionLost(f"PUBLISH {topic}: {mqtt.error_string(info.rc)}")
        deadline = monotonic() + timeout
        while not info.is_published():
            self.check()
            if monotonic() > deadline:
                raise ConnectionLost(f"no PUBACK for {topic} within {timeout} s")
            info.wait_for_publish(0.1)
        return self.pubacks.pop(info.mid, (0, "Success"))

    def subscribe(self, topic: str, timeout: float) -> None:
        self.check()
        rc, mid = self.client.subscribe(topic, qos=1)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionLost(f"SUBSCRIBE {topic}: {mqtt.error_string(rc)}")
        deadline = monotonic() + timeout
        with self.acked:
            while mid not in self.subacks:
                self.check()
                left = deadline - monotonic()
                if left <= 0:
                    raise ConnectionLost(f"no SUBACK for {topic} within {timeout} s")
                self.acked.wait(min(left, 0.5))
            codes, props = self.subacks.pop(mid)
        if codes[0].is_failure:
            raise MoteRefused(f"SUBSCRIBE {topic} refused: {_reason(codes[0], props)}")

    def control(self, topic: str) -> None:
        """A `$queue/$...` control publish, QoS 0: it is ordered before what follows."""
        if self.alive:
            self.client.publish(topic, b"", qos=0)

    def settle(self, mid: int, requeue: bool = False, retry_after: int = 0) -> bool:
        """Acknowledge job `mid` (its PUBACK), refusing it first if `requeue`.

        False when the connection it came on is gone: Mote gave it back already.
        """
        if not self.alive:
            return False
        if requeue:
            self.control(f"$queue/$nack/{mid}" + (f"/{retry_after}" if retry_after else ""))
        self.client.ack(mid, 1)
        return True

    def close(self) -> None:
        if self.error is None:
            self.error = "closed"
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


class QoS(virtual.QoS):
    """kombu's prefetch bookkeeping; acks, rejects and restores go to Mote."""

    def _settle(self, delivery_tag, requeue=False):
        transport = self.channel.connection
        if transport is not None:
            transport._settle(delivery_tag, requeue=requeue)

    def ack(self, delivery_tag):
        self._settle(delivery_tag)
        super().ack(delivery_tag)

    def reject(self, delivery_tag, requeue=False):
        # Not kombu's requeue (a copy published again): Mote puts the job itself back.
        self._settle(delivery_tag, requeue=requeue)
        self._quick_ack(delivery_tag)

    def restore_unacked(self):
        """Every job kombu holds goes back to its queue (a refusal each)."""
        self._flush()
        for tag in list(self._delivered):
            self._settle(tag, requeue=True)
        self._delivered.clear()
        return []


class Channel(virtual.Channel):
    QoS = QoS

    publish_timeout = 10.0
    delayed_publish = True
    queue_settings = None
    from_transport_options = virtual.Channel.from_transport_options + (
        "publish_timeout", "delayed_publish", "queue_settings")

    def _put(self, queue, message, **kwargs):
        topic = QUEUE_PREFIX + mote_queue_name(queue)
        delay = _delay_secs(message) if self.delayed_publish else None
        if delay:
            topic = f"$delayed/{delay}/{topic}"
        code, text = self.connection._mqtt().publish(topic, dumps(message), self.publish_timeout)
        if code >= 0x80 or code == NO_MATCHING_SUBSCRIBERS:
            why = ("no such queue ([queues] auto_create is off and it is not declared)"
                   if code == NO_MATCHING_SUBSCRIBERS else text)
            raise MoteRefused(f"PUBLISH {topic} refused: {why}")

    def _get(self, queue, timeout=None):
        return self.connection._next_job(queue)

    def _new_queue(self, queue, **kwargs):
        if self.queue_settings:
            self.connection._declare(queue, self.queue_settings, self.publish_timeout)

    def _purge(self, queue):
        raise NotImplementedError("Mote cannot purge a queue over MQTT")

    def _delete(self, queue, *args, **kwargs):
        """Mote queues are not deleted over MQTT: nothing to do."""

    def _size(self, queue):
        return 0

    def _lookup(self, exchange, routing_key, default=None):
        found = super()._lookup(exchange, routing_key, default)
        if not found and routing_key and self.typeof(exchange).type == "direct":
            return [routing_key]  # bound in another process: the routing key names the queue
        return found

    def basic_consume(self, queue, no_ack, callback, consumer_tag, **kwargs):
        super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        try:
            self.connection._start_consuming(queue, no_ack, self.qos.prefetch_count)
        except BaseException:
            super().basic_cancel(consumer_tag)
            raise

    def basic_cancel(self, consumer_tag):
        queue = self._tag_to_queue.get(consumer_tag) if consumer_tag in self._consumers else None
        super().basic_cancel(consumer_tag)
        if queue is not None and self.connection is not None:
            self.connection._stop_consuming(queue)


class Transport(virtual.Transport):
    Channel = Channel

    default_port = 1883
    driver_type = "mote"
    driver_name = "paho-mqtt"
    connection_errors = virtual.Transport.connection_errors + (ConnectionLost, OSError)
    channel_errors = virtual.Transport.channel_errors + (MoteRefused,)

    def __init__(self, client, **kwargs):
        super().__init__(client, **kwargs)
        options = client.transport_options
        self.keepalive = int(options.get("keepalive", 60))
        self.connect_timeout = float(options.get("connect_timeout") or client.connect_timeout or 10)
        self._client: _Mqtt | None = None
        self._lock = threading.RLock()
        self._arrived = threading.Event()
        self._jobs: dict = {}  # kombu queue -> deque of (_Mqtt, MQTTMessage) not yet given to kombu
        self._queue_of: dict = {}  # Mote queue name -> kombu queue
        self._consumers: dict = {}  # kombu queue -> number of kombu consumers
        self._no_ack: set = set()
        self._tags: dict = {}  # delivery_tag -> (_Mqtt, packet id)
        self._tag_seq = count(1)
        self._declared: set = set()

    def driver_version(self):
        return paho.mqtt.__version__

    # -- the connection --

    def _connect(self, receive_maximum=None) -> _Mqtt:
        conninfo = self.client
        conn = _Mqtt(self, receive_maximum)
        conn.connect(conninfo.hostname or "127.0.0.1", int(conninfo.port or self.default_port),
                     conninfo, self.keepalive, self.connect_timeout)
        return conn

    def _mqtt(self) -> _Mqtt:
        conn = self._client
        if conn is None:
            raise ConnectionLost("not connected to Mote")
        conn.check()
        return conn

    def establish_connection(self):
        with self._lock:
            if self._client is None or not self._client.alive:
                self._client = self._connect()
                self._jobs.clear()
        return super().establish_connection()

    def close_connection(self, connection):
        super().close_connection(connection)  # closes the channels: their jobs go back
        with self._lock:
            conn, self._client = self._client, None
        if conn is not None:
            conn.close()

    def _wake(self):
        self._arrived.set()

    def drain_events(self, connection, timeout=None):
        """Hands one received job to its consumer; waits up to `timeout` s for one."""
        end = None if timeout is None else monotonic() + timeout
        while True:
            self._arrived.clear()
            self._mqtt()  # raises ConnectionLost once the connection is gone
            try:
                self.cycle.get(self._deliver)
                return
            except Empty:
                pass
            left = None if end is None else end - monotonic()
            if left is not None and left <= 0:
                raise socket.timeout()
            self._arrived.wait(1.0 if left is None else min(left, 1.0))

    # -- consuming --

    def _start_consuming(self, queue: str, no_ack: bool, prefetch: int) -> None:
        name = mote_queue_name(queue)
        with self._lock:
            self._queue_of[name] = queue
            self._jobs.setdefault(queue, deque())
            (self._no_ack.add if no_ack else self._no_ack.discard)(queue)
            conn = self._mqtt()
            wanted = min(prefetch, 65535) or None
            if (not conn.subscribed and conn.receive_maximum != wanted
                    and not any(c is conn for c, _ in self._tags.values())):
                # The prefetch is the connection's Receive Maximum: connect again with
                # it, before the first SUBSCRIBE, while this connection holds no job.
                conn.close()
                self._client = conn = self._connect(wanted)
            if queue in conn.paused:
                conn.paused.discard(queue)
                conn.control(f"$queue/$credit/{name}/{2**32 - 1}")
            elif queue not in conn.subscribed:
                conn.subscribe(QUEUE_PREFIX + name, self.connect_timeout)
                conn.subscribed.add(queue)
            self._consumers[queue] = self._consumers.get(queue, 0) + 1

    def _stop_consuming(self, queue: str) -> None:
        with self._lock:
            left = self._consumers.get(queue, 0) - 1
            if left > 0:
                self._consumers[queue] = left
                return
            self._consumers.pop(queue, None)
            conn = self._client
            if conn is None or queue not in conn.subscribed or queue in conn.paused:
                return
            # Credit 0: nothing more comes; the jobs kombu holds may still be acked.
            conn.paused.add(queue)
            conn.control(f"$queue/$credit/{mote_queue_name(queue)}/0")
            waiting = self._jobs.get(queue, ())
            while waiting:
                c, msg = waiting.popleft()
                c.settle(msg.mid, requeue=True)

    def _on_message(self, client, userdata, msg):
        """A job from Mote (paho's thread): kept until kombu asks for it."""
        conn = self._client
        if conn is None or conn.client is not client:
            return  # a connection being replaced: Mote takes its jobs back
        topic = msg.topic
        name = topic[len(QUEUE_PREFIX):].split("/", 1)[0] if topic.startswith(QUEUE_PREFIX) else None
        queue = self._queue_of.get(name)
        if queue is None and len(conn.subscribed) == 1:
            queue = next(iter(conn.subscribed))  # a queue's `filter` delivered it
        if queue is None or queue in conn.paused:
            conn.settle(msg.mid, requeue=True)
            return
        self._jobs.setdefault(queue, deque()).append((conn, msg))
        self._arrived.set()

    def _next_job(self, queue: str) -> dict:
        """The next received job of `queue` as a kombu payload; Empty if none."""
        waiting = self._jobs.get(queue)
        while waiting:
            try:
                conn, msg = waiting.popleft()
            except IndexError:
                break
            if conn is not self._client or not conn.alive:
                continue  # its connection is gone: Mote gave it to someone else
            try:
                payload = loads(msg.payload)
                props = payload["properties"]
                delivery_info = props.setdefault("delivery_info", {})
            except Exception as exc:  # noqa: BLE001 - any unreadable job
                logger.error("Refusing a job of %s that is no kombu message (%s): %r",
                             msg.topic, exc, msg.payload[:200])
                conn.settle(msg.mid, requeue=True, retry_after=UNREADABLE_RETRY_SECS)
                continue
            users = dict(getattr(msg.properties, "UserProperty", None) or ())
            try:
                deliveries = int(users.get("mote-delivery-count", 1))
            except ValueError:
                deliveries = 1
            delivery_info["redelivered"] = bool(msg.dup) or deliveries > 1
            delivery_info["mote_delivery_count"] = deliveries
            if queue in self._no_ack:
                conn.settle(msg.mid)
            else:
                tag = f"{msg.mid}.{next(self._tag_seq)}"
                self._tags[tag] = (conn, msg.mid)
                props["delivery_tag"] = tag
            return payload
        raise Empty()

    def _settle(self, delivery_tag, requeue=False) -> None:
        """kombu acked (or rejected) `delivery_tag`: PUBACK its job."""
        with self._lock:
            entry = self._tags.pop(delivery_tag, None)
        if entry is None:
            return
        conn, mid = entry
        if conn is not self._client or not conn.settle(mid, requeue=requeue):
            logger.warning("Job %s was %s after its connection to Mote ended: Mote "
                           "had put it back in its queue already", delivery_tag,
                           "refused" if requeue else "acknowledged")
        self._arrived.set()  # room for one more

    # -- declarations --

    def _declare(self, queue: str, settings: dict, timeout: float) -> None:
        name = mote_queue_name(queue)
        if name in self._declared:
            return
        code, text = self._mqtt().publish(ADMIN_QUEUE_PREFIX + name, dumps(settings), timeout)
        if code >= 0x80:
            raise MoteRefused(f"declaring queue {name} {settings}: {text}")
        self._declared.add(name)


# Normally added already by _mote_kombu_alias (the .pth file); harmless twice.
TRANSPORT_ALIASES.setdefault("mote", f"{__name__}:Transport")
