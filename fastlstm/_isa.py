"""Which instruction set fastlstm's own kernels run at, for every compiled extension.

Levels (csrc/fastlstm_isa.h):

- ``"avx512"``: AVX-512 (F, VL, BW, DQ, CD) kernels;
- ``"avx2"``: AVX2+FMA kernels;
- ``"generic"``: no ISA-specific kernel: BLAS does every product, and the cell math,
  dense ops and optimizer updates run as portable C compiled for the baseline target.
  The only level on CPUs and builds without x86-64 kernels (ARM, other compilers).

At import the level is ``FASTLSTM_ISA`` when set, else the best the CPU has. A value
that is not one of the names, or one the CPU (or this build) cannot run, is a
``ValueError`` naming the variable: a forced level never silently becomes another.
The level is one setting held by fastlstm._runtime, which every kernel reads, so the
GEMMs, GEMVs, cell math, dense ops and optimizers always agree.
"""
import contextlib
import os

from ._backend import runtime as _runtime

ENV_VAR = "FASTLSTM_ISA"
LEVELS = {"generic": 0, "avx2": 1, "avx512": 2}
NAMES = {level: name for name, level in LEVELS.items()}

# (None without the compiled kernels: reported by fastlstm._backend / show_config)
_BEST = NAMES[_runtime.best_isa_level()] if _runtime is not None else "generic"


def best():
    """The best level this CPU runs and this build has kernels for (a name)."""
    return _BEST


_current = "generic"   # what set_isa last set (read on every kernel call: kept here)


def current():
    """The level the kernels run at now (a name)."""
    return _current


def _parse(value, what):
    name = str(value).strip().lower()
    if name not in LEVELS:
        raise ValueError(f"{what}={value!r} is not an instruction set fastlstm knows; use "
                         f"one of {', '.join(sorted(LEVELS, key=LEVELS.get))} (or leave "
                         f"{ENV_VAR} unset for the best the CPU has)")
    if LEVELS[name] > LEVELS[_BEST]:
        raise ValueError(f"{what}={value!r}: this CPU or build cannot run the {name} "
                         f"kernels (the best here is {_BEST!r}); use one of "
                         f"{', '.join(n for n in LEVELS if LEVELS[n] <= LEVELS[_BEST])}")
    return name


def set_isa(name):
    """Run every compiled kernel at level ``name`` ("avx512", "avx2" or "generic");
    returns the previous level's name. A level the CPU cannot run is a ValueError.
    Not thread-safe: change it while no kernel runs (tests and benchmarks do)."""
    global _current
    name = _parse(name, "isa")
    previous = _current
    if _runtime is not None:
        _runtime.set_isa_level(LEVELS[name])
    _current = name
    return previous


@contextlib.contextmanager
def isa(name):
    """Run the body at level ``name``, then restore the previous level."""
    previous = set_isa(name)
    try:
        yield
    finally:
        set_isa(previous)


def _apply_environment():
    value = os.environ.get(ENV_VAR, "").strip()
    if _runtime is None:
        # No compiled kernels (a broken or source-only install): the NumPy reference runs
        # and there is no level to force. A known name is accepted so the same setting
        # works everywhere; a misspelt one is still an error.
        if value and value.lower() not in LEVELS:
            _parse(value, ENV_VAR)
        return
    set_isa(_parse(value, ENV_VAR) if value else best())


_apply_environment()
