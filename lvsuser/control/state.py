"""The rule table that outlives the director: ``<state dir>/rules.json``.

Theory of operation
-------------------
Kernel IPVS keeps its table when the program that filled it exits; ``lvsuser run`` keeps its
own in a file, so that a restart (SIGTERM, SIGKILL, an upgrade) comes back with every rule
added by ``ipvsadm``, the ``--set`` timeouts and the mark rules, without re-adding them.

* After every successful change the daemon writes the whole table (``RulesState.save``, the
  backend's ``after_change`` hook, under the table's lock so saves are in change order) to a
  temporary file and renames it over ``rules.json``: a reader sees the old file or the new one,
  never half of one.  The directory is on tmpfs (/run), so no fsync: it is gone at reboot, as
  the kernel's table is.  The table copies a service on write and never changes a stored one,
  so each service's JSON text is kept by object and only the services a change touched are
  encoded again: a save costs a join and a write, not an encoding of the whole table.
* At start, before the backend publishes anything, ``load()`` turns the file into one batch of
  operations (``apply_batch``) that rebuilds the same table: services in the order they were
  added, each one's real servers oldest first, so listings come back in the same order.  The
  datapath therefore never sees an empty table first.
* The file says which format it is (``"lvsuser_rules": RULES_VERSION``).  A file of another
  version, or one that is not ours, is refused with one sentence -- never guessed at.
* ``discard()`` removes what a director keeps here (``lvsuser run --clean``, or a stop with an
  empty table): the rules and the datapath's mapping next to them.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from lvsuser import statedir
from lvsuser.control import protocol

RULES_VERSION = 1
_FORMAT_KEY = "lvsuser_rules"
_SERVICE_FIELDS = ("af", "protocol", "port", "fwmark", "scheduler", "flags", "timeout", "netmask",
                   "pe_name")
_DEST_FIELDS = ("port", "weight", "u_threshold", "l_threshold", "tun_port", "tun_flags", "af")


class StateError(Exception):
    """The saved table cannot be used; str() is one sentence for the user."""


class RulesState:
    """The rules file of one director (named by its state directory)."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, statedir.RULES_FILE)
        self._texts: dict[int, tuple[object, str]] = {}  # id(service) -> (service, its JSON)

    # --- writing ----------------------------------------------------------------------------
    def save(self, backend) -> None:
        """Write ``backend``'s whole table (a TableBackend), atomically."""
        services, timeouts, mark_rules = backend.saved_table()
        texts, kept = [], {}
        for svc in services:
            cached = self._texts.get(id(svc))
            if cached is None or cached[0] is not svc:
                cached = (svc, json.dumps(_service_entry(svc), separators=(",", ":")))
            kept[id(svc)] = cached
            texts.append(cached[1])
        self._texts = kept  # only the live services: nothing stale is kept alive
        document = "".join((
            f'{{"{_FORMAT_KEY}":{RULES_VERSION},"services":[', ",".join(texts), '],"timeouts":',
            json.dumps(protocol.encode(timeouts), separators=(",", ":")), ',"mark_rules":',
            json.dumps(protocol.encode(list(mark_rules)), separators=(",", ":")), "}\n"))
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(document)
        os.replace(temporary, self.path)

    def discard(self) -> bool:
        """Remove the saved rules and the datapath's mapping; True if there was anything."""
        found = False
        for name in (statedir.RULES_FILE, statedir.DATAPATH_FILE):
            try:
                os.unlink(os.path.join(self.directory, name))
                found = True
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.directory)
        except OSError:  # absent, or holds what is not ours: leave it
            pass
        return found

    # --- reading ----------------------------------------------------------------------------
    def load(self) -> Optional[list[tuple[str, dict]]]:
        """The batch that rebuilds the saved table, or None when nothing was saved."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read the saved rules {self.path}: {exc.strerror or exc}.") from exc
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if not isinstance(document, dict) or _FORMAT_KEY not in document:
            raise StateError(f"{self.path} is not an lvsuser rules file; remove it or start "
                             f"with --clean.")
        version = document[_FORMAT_KEY]
        if version != RULES_VERSION:
            raise StateError(f"{self.path} holds rules in format version {version!r}, which "
                             f"this lvsuser (format {RULES_VERSION}) does not read; start with "
                             f"--clean to discard them.")
        try:
            return _operations(document)
        except (protocol.ProtocolError, KeyError, TypeError, ValueError) as exc:
            raise StateError(f"{self.path} is damaged ({exc}); remove it or start with "
                             f"--clean.") from exc


def _service_entry(svc) -> dict:
    """A service's rules (no counters), its real servers oldest first: added in that order at
    the next start, they are listed as before (the table puts a new one first)."""
    entry = {name: getattr(svc, name) for name in _SERVICE_FIELDS}
    entry["addr"] = None if svc.addr is None else str(svc.addr)
    entry["dests_oldest_first"] = [
        {"addr": str(d.addr), "fwd": int(d.fwd), "tun_type": int(d.tun_type),
         **{name: getattr(d, name) for name in _DEST_FIELDS}}
        for d in reversed(svc.dests)]
    return entry


def _operations(document: dict) -> list[tuple[str, dict]]:
    import ipaddress

    from lvsuser import model

    operations: list[tuple[str, dict]] = []
    for entry in document["services"]:
        entry = dict(entry)
        dests = entry.pop("dests_oldest_first")
        addr = entry.pop("addr")
        svc = model.Service(addr=None if addr is None else ipaddress.ip_address(addr), **entry)
        operations.append(("add_service", {"svc": svc}))
        for raw in dests:
            raw = dict(raw)
            dest = model.Dest(addr=ipaddress.ip_address(raw.pop("addr")),
                              fwd=model.Forward(raw.pop("fwd")),
                              tun_type=model.TunType(raw.pop("tun_type")), **raw)
            operations.append(("add_dest", {"key": svc.key, "dest": dest}))
    operations.append(("set_timeouts", {"timeouts": protocol.decode(document["timeouts"])}))
    for rule in protocol.decode(document["mark_rules"]):
        operations.append(("add_mark_rule", {"rule": rule}))
    return operations
