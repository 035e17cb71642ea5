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
