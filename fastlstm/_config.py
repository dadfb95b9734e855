"""``fastlstm.show_config()``: what this installation runs on."""
import os
import platform
import sys

import numpy as np
import scipy

from . import _backend, _isa
from ._threads import blas_info, usable_cores


def cpu_model():
    """The CPU's model name as the OS reports it, with its x86 family and model numbers
    where known (a virtual machine may name only the vendor); "?" when it says nothing."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu family", "model") \
                        and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:   # the first processor is enough
                    break
    except OSError:
        pass
    name = fields.get("model name") or fields.get("hardware") or platform.processor() or "?"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def describe_isa(name):
    """What runs at instruction-set level ``name``, in words."""
    if name == "generic":
        return ("generic: BLAS for every product, portable C for the cell math, dense ops "
                "and optimizers")
    label = {"avx2": "AVX2+FMA", "avx512": "AVX-512"}[name]
    return (f"{name}: {label} kernels for the float32 step GEMM, NT product and GEMV, the "
            f"cell math, dense ops and optimizers; BLAS for the whole-sequence GEMMs")


def config():
    """A dict describing the build and the run-time: version, compiled kernels, OpenMP, BLAS."""
    from . import __version__
    kernels = _backend.lstm_kernels
    info = {
        "fastlstm": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "compiled": kernels is not None,
        "compiled_error": None if kernels is not None else str(_backend.IMPORT_ERROR),
        "openmp": bool(kernels is not None and _backend.runtime.OPENMP_ENABLED),
        "openmp_max_threads": (_backend.runtime.openmp_max_threads() if kernels is not None
                               else 0),
        "isa": _isa.current(),
        "isa_best": _isa.best(),
        "isa_env": os.environ.get(_isa.ENV_VAR) or None,
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "usable_cores": usable_cores(),
        "blas": [{k: lib.get(k) for k in ("internal_api", "version", "num_threads",
                                          "threading_layer", "architecture", "filepath")}
                 for lib in blas_info()],
    }
    return info


def show_config(file=None):
    """Print the version, whether the kernels are compiled, OpenMP and its thread count,
    and the BLAS libraries in use (the compiled kernels use SciPy's)."""
    info = config()
    out = file or sys.stdout
    print(f"fastlstm {info['fastlstm']} (Python {info['python']}, NumPy {info['numpy']}, "
          f"SciPy {info['scipy']})", file=out)
    print(f"platform: {info['platform']}", file=out)
    print(f"CPU: {info['cpu']} ({info['machine']})", file=out)
    if info["compiled"]:
        print("compiled kernels: yes", file=out)
        forced = (f"forced by {_isa.ENV_VAR}={info['isa_env']}" if info["isa_env"]
                  else f"{_isa.ENV_VAR} unset")
        print(f"instruction set: {describe_isa(info['isa'])} ({forced}; best here: "
              f"{info['isa_best']})", file=out)
    else:
        print(f"compiled kernels: NO, using the NumPy reference ({info['compiled_error']})",
              file=out)
    if info["openmp"]:
        print(f"OpenMP: yes, {info['openmp_max_threads']} threads by default "
              f"({info['usable_cores']} usable cores)", file=out)
    else:
        print("OpenMP: no, the kernels run single-threaded", file=out)
    for lib in info["blas"]:
        print(f"BLAS: {lib['internal_api']} {lib['version']} ({lib['threading_layer']}, "
              f"{lib['architecture']}, {lib['num_threads']} threads) at {lib['filepath']}",
              file=out)
