"""Shared helpers for the fastlstm tests."""
import contextlib
import json
import os
import pathlib
import subprocess
import sys
from typing import NamedTuple, Optional

import numpy as np
import pytest

import fastlstm

TESTS_DIR = str(pathlib.Path(__file__).resolve().parent)


def child_env(tests_on_path=False, **variables):
    """Environment for a child Python that imports the same fastlstm as this process
    (and the test modules, with ``tests_on_path``), plus ``variables``. Children run in
    tests/ or a temporary directory, because "-c" and "-m" put the working directory
    first on sys.path, and from the source root that would shadow an installed package
    with the uncompiled sources."""
    env = dict(os.environ)
    package_parent = str(pathlib.Path(fastlstm.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_parent, TESTS_DIR if tests_on_path else None,
                    env.get("PYTHONPATH")) if p)
    env.update(variables)
    return env


class ChildRun(NamedTuple):
    returncode: int
    results: dict      # id -> the dict of each "RESULT {json}" line
    last_begun: Optional[str]   # the last "BEGIN name" line: where a crash happened
    done: bool         # the child printed "DONE" last
    stderr: str


def run_child(code, timeout=300):
    """Run ``python -c code`` in tests/ (test modules importable) and collect what it
    printed in the BEGIN/RESULT/DONE protocol; a crash shows as not ``done``."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=TESTS_DIR, env=child_env(tests_on_path=True))
    results, last = {}, None
    for line in proc.stdout.splitlines():
        if line.startswith("BEGIN "):
            last = line[6:]
        elif line.startswith("RESULT "):
            r = json.loads(line[7:])
            results[r["id"]] = r
    return ChildRun(proc.returncode, results, last, proc.stdout.rstrip().endswith("DONE"),
                    proc.stderr)


@contextlib.contextmanager
def isa_limited(name):
    """Every compiled kernel at instruction set ``name`` ("avx2", "generic", ...) for the
    body, so lower levels are checked on better CPUs too; skips the test where the CPU
    lacks the level."""
    from fastlstm import _isa
    if _isa.LEVELS[name] > _isa.LEVELS[_isa.best()]:
        pytest.skip(f"the CPU lacks the {name} kernels")
    with _isa.isa(name):
        yield


def make_lstm_inputs(T, B, D, H, dtype=np.float64, seed=0, state=True):
    """x, W_x, W_h, b, h0, c0 with PyTorch's initial magnitudes (uniform +-1/sqrt(H));
    h0, c0 are None unless ``state``."""
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    W_x = rng.uniform(-k, k, (D, 4 * H)).astype(dtype)
    W_h = rng.uniform(-k, k, (H, 4 * H)).astype(dtype)
    b = rng.uniform(-k, k, 4 * H).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype) * 0.5 if state else None
    c0 = rng.standard_normal((B, H)).astype(dtype) * 0.5 if state else None
    return x, W_x, W_h, b, h0, c0


def mixed_lengths(T, B, seed=0):
    """(B,) lengths in [0, T] that include 0 and T when B allows, in no particular order."""
    rng = np.random.default_rng(seed + 1)
    lengths = rng.integers(0, T + 1, size=B)
    if B >= 1:
        lengths[0] = T
    if B >= 2:
        lengths[-1] = 0
    if B >= 3:
        lengths[1] = min(1, T)
    return lengths


def rel_err(actual, expected):
    """max |actual - expected| relative to max |expected| (absolute when that is ~0)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if actual.size == 0:
        return 0.0
    scale = max(np.abs(expected).max(), 1e-12)
    return float(np.abs(actual - expected).max() / scale)


def numeric_grad(loss, array, eps=1e-6):
    """Central finite differences of ``loss()`` w.r.t. every entry of ``array`` (which
    ``loss`` reads; it is perturbed in place and restored)."""
    grad = np.zeros_like(array)
    for idx in np.ndindex(array.shape):
        old = array[idx]
        array[idx] = old + eps
        up = loss()
        array[idx] = old - eps
        down = loss()
        array[idx] = old
        grad[idx] = (up - down) / (2 * eps)
    return grad


# float64 must agree with the reference to ~1e-10 relative; float32 to a few hundred ulp of
# the array's scale (errors accumulate through the recursion and the reductions over T*B).
TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 2e-4}


@pytest.fixture
def tol():
    return lambda dtype: TOLERANCE[np.dtype(dtype)]
