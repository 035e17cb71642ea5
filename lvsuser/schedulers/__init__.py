"""Schedulers: which real server gets a new connection.

Every scheduler of kernel IPVS is here, deciding exactly as ``net/netfilter/ipvs/ip_vs_<name>.c``
does: rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh, twos.  Each lives in its own
small module and registers itself; this module is the registry and knows nothing of algorithms.
The datapath runs the C twins in ``lvsuser/fastpath/sched/``; these Python classes are the
readable reference, used by the pure-Python datapath and by the tests that hold the two together.

Writing your own scheduler (plugin API)
---------------------------------------
A scheduler is a class derived from ``lvsuser.schedulers.Scheduler``::

    # /etc/lvsuser/schedulers/leastweight.py   (or any module of your own package)
    from lvsuser.schedulers import Scheduler

    class LeastWeight(Scheduler):
        '''Always the available dest with the smallest positive weight.'''
        name = "leastw"               # what `ipvsadm -A ... -s leastw` selects (<= 15 chars)

        def update(self):             # dests were added, edited or deleted
            pass                      # precompute here, not per packet

        def schedule(self, pkt, now): # pkt: PacketInfo(af, protocol, saddr, sport, daddr, dport)
            usable = [d for d in self.service.dests
                      if d.weight > 0 and not d.overloaded]
            return min(usable, key=lambda d: d.weight, default=None)   # None: no dest

``self.service`` is the ``model.Service``; its ``dests`` are in the kernel's list order
(newest first) and carry weights, thresholds, ``activeconns``/``inactconns`` and flags.

Make it known in either way:

* a file or directory given to the daemon: ``lvsuser run --scheduler-path /etc/lvsuser/schedulers``
  (every ``*.py`` in a directory is loaded; every ``Scheduler`` subclass with a ``name`` defined
  in it is registered);
* an installed package, through the entry-point group ``lvsuser.schedulers``::

      [project.entry-points."lvsuser.schedulers"]
      leastw = "mypkg.leastweight:LeastWeight"

Then ``lvsuser ipvsadm -A -t 198.18.0.10:80 -s leastw``.  Built-ins run in C in the compiled
datapath; a plugin is Python, so the datapath calls its ``schedule`` (with the GIL) for each new
connection of a service that uses it -- fine for modest connection rates.  Names of built-in
schedulers cannot be taken by plugins.  ``update()`` may also be called when nothing changed
(the datapath republishes all services together); make it cheap and idempotent.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import pathlib
import sys
from typing import Iterable

from lvsuser import model
from lvsuser.schedulers.base import SCHEDNAME_MAXLEN, PacketInfo, Scheduler

__all__ = ["PacketInfo", "Scheduler", "SchedulerError", "register", "create", "names",
           "is_builtin", "get", "load_plugins"]

ENTRY_POINT_GROUP = "lvsuser.schedulers"

_registry: dict[str, type[Scheduler]] = {}
_builtin_names: set[str] = set()
_loading_builtins = True


class SchedulerError(ValueError):
    """An unknown scheduler name, or a plugin that cannot be loaded or registered."""


def _check_class(cls) -> str:
    if not (inspect.isclass(cls) and issubclass(cls, Scheduler)):
        raise SchedulerError(f"{cls!r} is not a subclass of lvsuser.schedulers.Scheduler")
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name:
        raise SchedulerError(f"scheduler class {cls.__qualname__} has no name")
    if len(name) > SCHEDNAME_MAXLEN or not name.isprintable() or any(c.isspace() for c in name):
        raise SchedulerError(f"bad scheduler name {name!r}: 1-{SCHEDNAME_MAXLEN} printable "
                             "characters without spaces")
    return name


def register(cls: type[Scheduler]) -> type[Scheduler]:
    """Register a scheduler class under ``cls.name``; usable as a class decorator.

    Registering the same class again is harmless; another class under a taken name is an error.
    """
    name = _check_class(cls)
    existing = _registry.get(name)
    if existing is not None and existing is not cls:
        if name in _builtin_names:
            raise SchedulerError(f"scheduler name {name!r} is a built-in scheduler")
        raise SchedulerError(f"scheduler name {name!r} is already registered by "
                             f"{existing.__module__}.{existing.__qualname__}")
    _registry[name] = cls
    if _loading_builtins:
        _builtin_names.add(name)
    return cls


def get(name: str) -> type[Scheduler]:
    try:
        return _registry[name]
    except KeyError:
        raise SchedulerError(f"unknown scheduler {name!r}") from None


def create(name: str, service: model.Service) -> Scheduler:
    """A new instance of scheduler ``name`` for ``service`` (raises SchedulerError if unknown)."""
    return get(name)(service)


def names() -> list[str]:
    """All registered scheduler names, sorted."""
    return sorted(_registry)


def is_builtin(name: str) -> bool:
    return name in _builtin_names


def _register_module_classes(module, origin: str) -> list[str]:
    found = []
    for _, obj in inspect.getmembers(module, inspect.isclass):
        if obj is Scheduler or not issubclass(obj, Scheduler) or obj.__module__ != module.__name__:
            continue
        if not getattr(obj, "name", ""):
            continue  # an abstract helper class
        register(obj)
        found.append(obj.name)
    if not found:
        raise SchedulerError(f"{origin}: defines no Scheduler subclass with a name")
    return found


def _load_file(path: pathlib.Path) -> list[str]:
    module_name = "lvsuser_plugin_" + "".join(c if c.isalnum() else "_" for c in str(path.resolve()))
    if module_name in sys.modules:  # loaded before: the same classes, registered already
        return _register_module_classes(sys.modules[module_name], str(path))
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise SchedulerError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        return _register_module_classes(module, str(path))
    except SchedulerError:
        sys.modules.pop(module_name, None)
        raise
    except Exception as exc:  # the plugin's own bug: report it with its origin
        sys.modules.pop(module_name, None)
        raise SchedulerError(f"{path}: {type(exc).__name__}: {exc}") from exc


def load_plugins(paths: Iterable[str] = (), entry_points: bool = True) -> list[str]:
    """Load plugin schedulers from files/directories and from the entry-point group.

    Returns the names registered.  A bad plugin raises SchedulerError naming its origin;
    schedulers registered before it stay registered.
    """
    loaded: list[str] = []
    for raw in paths:
        path = pathlib.Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.glob("*.py") if not p.name.startswith("_"))
        elif path.is_file():
            files = [path]
        else:
            raise SchedulerError(f"{path}: no such scheduler file or directory")
        for file in files:
            loaded.extend(_load_file(file))
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
            except Exception as exc:
                raise SchedulerError(f"entry point {ep.name} = {ep.value}: "
                                     f"{type(exc).__name__}: {exc}") from exc
            if inspect.ismodule(obj):
                loaded.extend(_register_module_classes(obj, f"entry point {ep.name}"))
            else:
                register(obj)
                loaded.append(obj.name)
    return loaded


# The built-ins, registered in this explicit order as each module is imported.
from lvsuser.schedulers import (  # noqa: E402,F401  (imported for their registration)
    rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh, twos)

_loading_builtins = False
