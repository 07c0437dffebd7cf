"""Mote from Python: a kombu transport, so that Celery runs on Mote's work queues.

    from celery import Celery
    app = Celery("tasks", broker="mote://127.0.0.1:1883//")

The transport is ``mote.kombu.Transport``; an installed package makes kombu resolve
``mote://`` to it without any import (see README.md). The transport's exceptions are
here too: ``from mote import MoteRefused``. Importing ``mote`` alone imports neither
kombu nor paho-mqtt; the names below are loaded from ``mote.kombu`` on first use.
"""

__version__ = "0.1.0"
__all__ = ("Transport", "MoteRefused", "ConnectionLost", "mote_queue_name")


def __getattr__(name):
    if name in __all__:
        from . import kombu

        return getattr(kombu, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(__all__))
