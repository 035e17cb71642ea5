"""The argv walker against the real libpopt (the library ipvsadm links), call by call.

ipvsadm's behaviour on odd command lines is popt's: which word is an option, which is its
argument, which is left over, and which error comes first.  Here the same argument vectors go
through libpopt (through ctypes, with ipvsadm's option table) and through ``Popt``, and
every step must agree.  Skipped where libpopt.so.0 is not installed.
"""
import ctypes
import ctypes.util

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvsuser.control.ipvsadm.constants import NONE, OPTIONAL, OPTIONS_TABLE, STRING
from lvsuser.control.ipvsadm.popt import Popt

POPT_ARG_NONE = 0
POPT_ARG_STRING = 1
POPT_ARGFLAG_OPTIONAL = 0x10000000
POPT_BADOPTION_NOALIAS = 1


class PoptOption(ctypes.Structure):
    _fields_ = [("longName", ctypes.c_char_p), ("shortName", ctypes.c_char),
                ("argInfo", ctypes.c_uint), ("arg", ctypes.c_void_p), ("val", ctypes.c_int),
                ("descrip", ctypes.c_char_p), ("argDescrip", ctypes.c_char_p)]


def _load_popt():
    for name in ("libpopt.so.0", ctypes.util.find_library("popt")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.poptGetContext.restype = ctypes.c_void_p
        lib.poptGetContext.argtypes = [ctypes.c_char_p, ctypes.c_int,
                                       ctypes.POINTER(ctypes.c_char_p), ctypes.c_void_p, ctypes.c_uint]
        lib.poptGetNextOpt.argtypes = [ctypes.c_void_p]
        lib.poptBadOption.restype = ctypes.c_char_p
        lib.poptBadOption.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.poptGetArg.restype = ctypes.c_char_p
        lib.poptGetArg.argtypes = [ctypes.c_void_p]
        lib.poptFreeContext.argtypes = [ctypes.c_void_p]
        return lib
    return None


POPT = _load_popt()
pytestmark = pytest.mark.skipif(POPT is None, reason="libpopt.so.0 is not installed")


def real_popt_steps(argv):
    """[(val, arg or None, bad option or None)] until popt says -1 or an error, then leftovers."""
    storage = ctypes.c_char_p(None)
    table = (PoptOption * (len(OPTIONS_TABLE) + 1))()
    for i, (long_name, short, kind, val) in enumerate(OPTIONS_TABLE):
        info = {NONE: POPT_ARG_NONE, STRING: POPT_ARG_STRING,
                OPTIONAL: POPT_ARG_STRING | POPT_ARGFLAG_OPTIONAL}[kind]
        table[i] = PoptOption(long_name.encode(), short.encode() if short else b"\0", info,
                              ctypes.addressof(storage) if kind != NONE else None, val,
                              None, None)
    encoded = [word.encode() for word in argv]
    c_argv = (ctypes.c_char_p * (len(encoded) + 1))(*encoded, None)
    context = POPT.poptGetContext(b"ipvsadm", len(encoded), c_argv, ctypes.addressof(table), 0)
    steps = []
    try:
        while True:
            storage.value = None
            val = POPT.poptGetNextOpt(context)
            if val < -1:
                steps.append((val, None, POPT.poptBadOption(context, POPT_BADOPTION_NOALIAS).decode()))
                break
            if val == -1:
                break
            steps.append((val, storage.value.decode() if storage.value is not None else None, None))
        leftovers = []
        while (word := POPT.poptGetArg(context)) is not None:
            leftovers.append(word.decode())
    finally:
        POPT.poptFreeContext(context)
    return steps, leftovers


def our_popt_steps(argv):
    walker = Popt(argv)
    steps = []
    while True:
        val, arg = walker.next_opt()
        if val < -1:
            steps.append((val, None, walker.bad_option()))
            break
        if val == -1:
            break
        kind = next(entry[2] for entry in OPTIONS_TABLE if entry[3] == val)
        steps.append((val, arg if kind != NONE else None, None))
    leftovers = []
    while (word := walker.get_arg()) is not None:
        leftovers.append(word)
    return steps, leftovers


@pytest.mark.parametrize("argv", [
    ["-Ln"], ["-At1.2.3.4:80", "-srr"], ["-A", "-t", "-s"], ["-A", "-p"], ["-A", "-p", "-t", "x"],
    ["-A", "-p", "60"], ["-A", "-p60"], ["-A", "--persistent=", "-t"], ["-L", "--numeric=1"],
    ["-Ln=x"], ["-L", "-nq"], ["-L", "--bogus"], ["-A", "--", "-t", "x"], ["-", "-L"],
    ["x", "-L", "y"], ["-L", "-t"], ["--set", "1", "-1", "2"], ["-A", "-t="], ["-w"],
    ["--tcp-service", "a", "--list"], ["-", "--"], ["-6", "-f", "1"], ["-bflag-1", "-A"],
])
def test_examples_agree_with_libpopt(argv):
    full = ["ipvsadm", *argv]
    assert our_popt_steps(full) == real_popt_steps(full)


WORDS = ["-A", "-L", "-Ln", "-n", "-t", "-p", "-p5", "--persistent", "--persistent=7", "-s",
         "-srr", "--scheduler=wlc", "-x", "-q", "--bogus", "--", "-", "", "x", "1.2.3.4:80",
         "-=", "-L=", "--list=", "--set", "-6", "-X", "--exact", "-Ap", "-nL", "-w=3", "=", "-b"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(WORDS),
                          st.text(alphabet="-=AaLlnptsxXq6b1", max_size=5)), max_size=7))
def test_random_argv_agrees_with_libpopt(words):
    full = ["ipvsadm", *words]
    assert our_popt_steps(full) == real_popt_steps(full)
