"""Build the compiled kernels: Cython + scipy.linalg.cython_blas + OpenMP.

OpenMP is detected by compiling a tiny test program. Without it the extensions are
built single-threaded and ``fastlstm.show_config()`` says so.
"""
import os
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup


def _compiler_is_msvc():
    return sys.platform == "win32" and "GCC" not in sys.version


def _openmp_flags():
    """(compile_args, link_args) that enable OpenMP, or ([], []) when the compiler has none."""
    if os.environ.get("FASTLSTM_NO_OPENMP", "").strip().lower() not in ("", "0", "false", "no"):
        return [], []
    if _compiler_is_msvc():
        return ["/openmp"], []
    flags = ["-fopenmp"]
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "omp_check.c")
        with open(path, "w") as f:
            f.write(src)
        cmd = cc.split() + flags + [path, "-o", os.path.join(tmp, "omp_check")]
        try:
            ok = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        except OSError:
            ok = False
    if not ok:
        print("fastlstm: the C compiler has no OpenMP; building single-threaded kernels",
              file=sys.stderr)
        return [], []
    return flags, flags


omp_compile, omp_link = _openmp_flags()
extra_compile = list(omp_compile)
if not _compiler_is_msvc():
    # -fno-math-errno: no kernel relies on errno, and with it set GCC keeps sqrt scalar
    # (the optimizer updates in csrc/fastlstm_dense.h would not vectorise)
    extra_compile += ["-O3", "-fno-math-errno", "-fno-trapping-math", "-Wno-unused-function"]

define_macros = [("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")]
if os.environ.get("FASTLSTM_NO_ISA_KERNELS", "").strip().lower() not in ("", "0", "false", "no"):
    # No x86-64 kernel at all, as on ARM: BLAS for every product, portable C for the rest
    # (CI builds this on x86-64 to run the suite the way an aarch64 machine does).
    define_macros.append(("FASTLSTM_NO_ISA_KERNELS", "1"))

extensions = [
    Extension(
        f"fastlstm.{name}",
        [f"fastlstm/{name}.pyx"],
        include_dirs=["csrc", numpy.get_include()],
        depends=["csrc/fastlstm_kernels.h", "csrc/fastlstm_gemm.h", "csrc/fastlstm_dense.h",
                 "fastlstm/_blas.pxd", "fastlstm/_kernel_common.pxd",
                 "fastlstm/_runtime.pxd", "csrc/fastlstm_isa.h", "csrc/fastlstm_gru.h",
                 "csrc/fastlstm_lstmp.h"],
        extra_compile_args=extra_compile,
        extra_link_args=omp_link,
        define_macros=define_macros,
    )
    for name in ("_runtime", "_lstm", "_rnn", "_dense", "_gru", "_lstmp")
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3},
    ),
)
