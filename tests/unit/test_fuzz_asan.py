"""The compiled core under AddressSanitizer: build it (LVSUSER_ASAN=1) in a temporary copy of the
source tree, then run the fuzz corpus through it in a subprocess with libasan preloaded.  Any
out-of-bounds access aborts the subprocess with an ASan report, which fails this test."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _libasan() -> str | None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    path = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if path and os.path.isabs(path) and os.path.exists(path) else None


RUNNER = textwrap.dedent("""
    import sys
    import lvsuser._fastpath as compiled
    assert compiled.__file__.startswith(sys.argv[1]), compiled.__file__
    from tests.unit import test_fuzz_cores as fuzz
    total = 0
    for mode, seed in (("l2", 11), ("l3", 12)):
        items = fuzz.corpus(seed=seed, count=4000, mode=mode)
        results, counters = fuzz.run_corpus(compiled.Core, items, mode)
        total += len(results)
    # and a full table, expiry and a re-publish that drops dests, under ASan too
    core = fuzz.new_core(compiled.Core, fuzz.fuzz_config(), max_conns=8)
    for i, (frame, ifx, now, partial) in enumerate(fuzz.corpus(seed=13, count=2000)):
        core.process(frame, ifx, now, partial)
        if i % 400 == 399:
            cfg = fuzz.fuzz_config()
            for svc in cfg.services:
                del svc.dests[i // 400 % 2]
            core.publish(cfg)
    core.expire(1e6)
    # rule changes as deltas (slots, refcounts, gone dests) and restarts on a state file
    import os, tempfile
    from tests.unit import test_core_deltas as deltas, test_core_state as state
    for seed in range(4):
        deltas.test_random_deltas_both_cores_agree(seed)
        with tempfile.TemporaryDirectory() as tmp:
            state.test_random_restarts_keep_the_table(os.path.join(tmp, "datapath.map"), seed)
    # publishes racing batches in another thread (the lock, freed dest lists and slots)
    import random, threading
    rng = random.Random(5)
    core = compiled.Core(max_conns=2048, max_dests=64)
    core.publish(deltas.random_config(rng))
    frames = [deltas.random_frame(random.Random(i)) for i in range(1024)]
    done = threading.Event()

    def traffic():
        for n in range(4000):
            core.process_batch(frames[(n * 64) % 960:(n * 64) % 960 + 64], 1.0 + n // 40)
            if done.is_set():
                break
    thread = threading.Thread(target=traffic)
    thread.start()
    for _ in range(3000):
        core.publish(deltas.random_config(rng))
    done.set()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert sum(r for _, r, _ in core._slots()["dests"].values()) == len(core._entries())
    print("ASAN-OK", total)
""")


def test_fuzz_corpus_under_asan(tmp_path):
    libasan = _libasan()
    if libasan is None:
        pytest.skip("the C toolchain has no AddressSanitizer runtime (libasan.so not found)")
    src = tmp_path / "src"
    shutil.copytree(ROOT / "lvsuser", src / "lvsuser",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "*.html", "__pycache__"))
    shutil.copy(ROOT / "setup.py", src / "setup.py")
    env = dict(os.environ, LVSUSER_ASAN="1")
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace", "-t", str(tmp_path / "tmp")],
        cwd=src, env=env, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    built = list((src / "lvsuser").glob("_fastpath*.so"))
    assert built and b"__asan_report" in built[0].read_bytes(), "the build is not instrumented"
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               PYTHONPATH=f"{src}{os.pathsep}{ROOT}")
    run = subprocess.run([sys.executable, "-c", RUNNER, str(src)], cwd=src, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and "ASAN-OK" in run.stdout, run.stdout[-3000:] + run.stderr[-6000:]
