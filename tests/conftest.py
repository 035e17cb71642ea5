"""Session-wide hygiene: a director keeps its table under /run/lvsuser/state when it stops with
rules in it (as kernel IPVS keeps its table), so tests that stop one that way would leave that
state behind.  Whatever state directory appeared during the session is removed at its end."""
from __future__ import annotations

import os
import shutil

import pytest

from lvsuser.statedir import STATE_ROOT


def _state_dirs() -> set[str]:
    try:
        return set(os.listdir(STATE_ROOT))
    except OSError:
        return set()


@pytest.fixture(scope="session", autouse=True)
def remove_director_state_left_by_tests():
    before = _state_dirs()
    yield
    for name in _state_dirs() - before:
        shutil.rmtree(os.path.join(STATE_ROOT, name), ignore_errors=True)
