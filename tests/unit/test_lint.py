"""Lint as an ordinary test: pyflakes' checks (unused imports and names, undefined names) over the
whole tree. A wrong program often shows here first: a name used before it exists, a dead import."""
import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_pyflakes_checks_are_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (tools/setup.sh installs it from requirements-dev.txt)")
    result = subprocess.run([ruff, "check", "--select", "F", "--no-cache", "--output-format",
                             "concise", "lvsuser", "tests", "bench", "tools"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
