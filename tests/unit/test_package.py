"""The installed package is what setup.py promises: a compiled datapath and the console scripts."""
import importlib.machinery
import shutil

import lvsuser


def test_fastpath_is_a_compiled_extension():
    import lvsuser._fastpath as fastpath

    assert fastpath.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), fastpath.__file__


def test_console_scripts_are_installed():
    assert shutil.which("lvsuser"), "pip install did not install the lvsuser script"
    assert shutil.which("lvsuser-ipvsadm"), "pip install did not install the lvsuser-ipvsadm script"


def test_version():
    assert lvsuser.__version__.count(".") == 2


def test_console_entry_points_resolve_to_the_commands():
    """setup.py's console_scripts name these: the lvsuser-ipvsadm script must still find
    ipvsadm's main in the package it became."""
    import io

    from lvsuser import cli
    from lvsuser.control.ipvsadm import main

    out = io.StringIO()
    assert main(["-v"], stdout=out) == 0
    assert out.getvalue().startswith("ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)")
    assert callable(cli.main)
