"""Makes kombu resolve the URL scheme ``mote://`` with no import in the app.

kombu 5 resolves a transport name through one dict, ``kombu.transport.TRANSPORT_ALIASES``,
and loads no entry points for transports (it does for serializers and matchers only), so
an installed package cannot add a scheme by metadata alone. The wheel therefore puts
``mote_kombu.pth`` in site-packages; Python's ``site`` module runs its one line,
``import _mote_kombu_alias``, at every interpreter start. This module then imports
nothing and touches nothing but ``sys.meta_path``: it adds a finder that looks at one
module name only, ``kombu.transport``. When a program imports that module (the first
``Connection`` or ``Celery`` app does), the finder lets the real import run and, right
after the module body, adds ``TRANSPORT_ALIASES['mote'] = 'mote.kombu:Transport'``, then
leaves ``sys.meta_path``. kombu and paho-mqtt are imported only by programs that use kombu,
and ``mote.kombu`` (which imports paho-mqtt) only when a ``mote://`` URL is resolved.
"""

import sys

ALIAS = "mote"
TARGET = "mote.kombu:Transport"
WATCHED = "kombu.transport"


def _register(module) -> None:
    aliases = getattr(module, "TRANSPORT_ALIASES", None)
    if isinstance(aliases, dict):
        aliases.setdefault(ALIAS, TARGET)


class _Loader:
    """The real loader of ``kombu.transport``, plus the alias once its body has run."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        # The module keeps the real loader, as if this hook had never been there.
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _register(module)


class _Finder:
    """On ``sys.meta_path`` until ``kombu.transport`` is first looked for."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != WATCHED:
            return None
        _uninstall()
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec


_FINDER = _Finder()


def _uninstall() -> None:
    try:
        sys.meta_path.remove(_FINDER)
    except ValueError:
        pass


def install() -> None:
    """Registers the alias now if kombu.transport is loaded, or when it is."""
    module = sys.modules.get(WATCHED)
    if module is not None:
        _register(module)
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


install()
