"""The scheduler registry and the plugin API (files, directories, entry points)."""
from __future__ import annotations

import importlib.metadata
import ipaddress
import textwrap

import pytest

from lvsuser import model, schedulers
from lvsuser.schedulers import PacketInfo, Scheduler, SchedulerError

KERNEL_SCHEDULERS = {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo",
                     "ovf", "mh", "twos"}

PLUGIN = textwrap.dedent('''
    from lvsuser.schedulers import Scheduler

    class LeastWeight(Scheduler):
        name = "{name}"

        def schedule(self, pkt, now):
            usable = [d for d in self.service.dests if d.weight > 0 and not d.overloaded]
            return min(usable, key=lambda d: d.weight, default=None)
''')


@pytest.fixture
def clean_registry():
    saved = dict(schedulers._registry)
    yield
    schedulers._registry.clear()
    schedulers._registry.update(saved)


def service_with(weights):
    svc = model.Service(af=model.AF_INET, protocol=model.IPPROTO_TCP,
                        addr=ipaddress.ip_address("198.18.0.10"), port=80)
    for i, weight in enumerate(weights):
        svc.dests.insert(0, model.Dest(addr=ipaddress.ip_address(f"198.18.1.{i + 1}"), port=80,
                                       weight=weight))
    return svc


PKT = PacketInfo(model.AF_INET, model.IPPROTO_TCP, ipaddress.ip_address("198.18.2.1"), 1234,
                 ipaddress.ip_address("198.18.0.10"), 80)


def test_every_kernel_scheduler_is_builtin_in_python_and_c():
    assert set(schedulers.names()) >= KERNEL_SCHEDULERS
    assert all(schedulers.is_builtin(n) for n in KERNEL_SCHEDULERS)
    from lvsuser import _fastpath

    assert set(_fastpath.c_scheduler_names()) == KERNEL_SCHEDULERS


def test_create_builds_a_scheduler_for_the_service():
    svc = service_with([1, 1])
    scheduler = schedulers.create("rr", svc)
    assert scheduler.service is svc
    assert scheduler.schedule(PKT, 0.0) is svc.dests[0]


def test_unknown_name_is_a_clear_error():
    with pytest.raises(SchedulerError, match="unknown scheduler 'nosuch'"):
        schedulers.create("nosuch", service_with([1]))


def test_register_rejects_bad_classes_and_names(clean_registry):
    class NoName(Scheduler):
        pass

    class TooLong(Scheduler):
        name = "x" * 16

    class Spaced(Scheduler):
        name = "a b"

    class TakesBuiltin(Scheduler):
        name = "rr"

    for cls, message in ((NoName, "has no name"), (TooLong, "bad scheduler name"),
                         (Spaced, "bad scheduler name"), (TakesBuiltin, "built-in"),
                         (object, "not a subclass")):
        with pytest.raises(SchedulerError, match=message):
            schedulers.register(cls)
    assert schedulers.get("rr").__module__ == "lvsuser.schedulers.rr"


def test_plugin_file_registers_and_schedules(tmp_path, clean_registry):
    path = tmp_path / "leastweight.py"
    path.write_text(PLUGIN.format(name="leastw"))
    assert schedulers.load_plugins([str(path)], entry_points=False) == ["leastw"]
    assert not schedulers.is_builtin("leastw")
    svc = service_with([5, 2, 9])
    assert schedulers.create("leastw", svc).schedule(PKT, 0.0).weight == 2
    # Loading the same file again is harmless.
    assert schedulers.load_plugins([str(path)], entry_points=False) == ["leastw"]


def test_plugin_directory_loads_every_module(tmp_path, clean_registry):
    (tmp_path / "one.py").write_text(PLUGIN.format(name="plug1"))
    (tmp_path / "two.py").write_text(PLUGIN.format(name="plug2"))
    (tmp_path / "_private.py").write_text("raise RuntimeError('not loaded')\n")
    assert sorted(schedulers.load_plugins([str(tmp_path)], entry_points=False)) == ["plug1", "plug2"]


def test_broken_plugins_fail_with_their_origin(tmp_path, clean_registry):
    broken = tmp_path / "broken.py"
    broken.write_text("def oops(:\n")
    with pytest.raises(SchedulerError, match="broken.py: SyntaxError"):
        schedulers.load_plugins([str(broken)], entry_points=False)
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(SchedulerError, match="defines no Scheduler subclass"):
        schedulers.load_plugins([str(empty)], entry_points=False)
    with pytest.raises(SchedulerError, match="no such scheduler file"):
        schedulers.load_plugins([str(tmp_path / "missing.py")], entry_points=False)
    clash = tmp_path / "clash.py"
    clash.write_text(PLUGIN.format(name="wlc"))
    with pytest.raises(SchedulerError, match="built-in"):
        schedulers.load_plugins([str(clash)], entry_points=False)
    assert schedulers.get("wlc").__module__ == "lvsuser.schedulers.wlc"


def test_entry_point_plugins(tmp_path, monkeypatch, clean_registry):
    (tmp_path / "epplugin.py").write_text(PLUGIN.format(name="epw"))
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(name="epw", value="epplugin:LeastWeight",
                                       group=schedulers.ENTRY_POINT_GROUP)

    def fake_entry_points(group=None, **kwargs):
        return [ep] if group == schedulers.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    assert schedulers.load_plugins() == ["epw"]
    assert schedulers.get("epw").__name__ == "LeastWeight"
    bad = importlib.metadata.EntryPoint(name="bad", value="no_such_module_here:X",
                                        group=schedulers.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None, **kw: [bad] if group == schedulers.ENTRY_POINT_GROUP else [])
    with pytest.raises(SchedulerError, match="entry point bad"):
        schedulers.load_plugins()


def test_docstring_example_works(tmp_path, clean_registry):
    doc = schedulers.__doc__
    start = doc.index("    # /etc/lvsuser/schedulers/leastweight.py")
    end = doc.index("``self.service`` is")
    source = textwrap.dedent(doc[start:end])
    path = tmp_path / "leastweight.py"
    path.write_text(source)
    assert schedulers.load_plugins([str(path)], entry_points=False) == ["leastw"]
    svc = service_with([3, 1, 0])
    assert schedulers.create("leastw", svc).schedule(PKT, 0.0).weight == 1
