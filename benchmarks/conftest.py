"""pytest-benchmark plumbing shared by ``benchmarks/bench_*.py``.

* Collects ``bench_*.py`` even where the ini file's ``python_files`` lacks the pattern
  (the root pyproject.toml has it; this keeps the suite collectable without it).
* Makes the in-place build importable when fastlstm is not installed (an installed
  fastlstm always wins: a clean clone has no compiled extension in its source tree).
* The ``bench_log`` fixture: each benchmark reports its case, thread count, mode,
  implementation and FLOPs after its run; the log adds GFLOP/s (from the mean time) to
  the benchmark's ``extra_info`` (hence to ``--benchmark-json`` / ``--benchmark-autosave``)
  and ``pytest_terminal_summary`` prints one table at the end: mean and best time,
  GFLOP/s, share of the sgemm peak, speedup over torch and over the NumPy reference
  (same case, thread count and mode), and the memory measurements.

* ``FASTLSTM_BENCH_ISA=avx512|avx2|generic`` runs every library at one instruction set,
  so an AVX2 machine can be measured on an AVX-512 one (on Zen 4 an AVX2 FMA has the same
  throughput per float as an AVX-512 one): fastlstm through ``FASTLSTM_ISA``, OpenBLAS
  through ``OPENBLAS_CORETYPE``, torch through ``ATEN_CPU_CAPABILITY`` and MKL through
  ``MKL_ENABLE_INSTRUCTIONS``. They are set here, before NumPy, SciPy or torch load; a
  variable already set in the environment is a usage error unless it agrees. The
  summary's header says what each library ran.

Nothing here asserts a timing: speed is measured, never tested.
"""
import fnmatch
import importlib.util
import os
import platform
import sys
from pathlib import Path

import pytest

# What FASTLSTM_BENCH_ISA sets: fastlstm, OpenBLAS, torch (ATen), MKL and oneDNN (torch's
# CPU LSTM runs on oneDNN's RNN primitive, which ATen's and MKL's settings do not reach:
# without ONEDNN_MAX_CPU_ISA an "avx2" run would still give torch's LSTM AVX-512; at
# "avx512" oneDNN keeps its default, the best the CPU has).
BENCH_ISA_VAR = "FASTLSTM_BENCH_ISA"
BENCH_ISA_SETTINGS = {
    "avx512": {"FASTLSTM_ISA": "avx512", "OPENBLAS_CORETYPE": "SkylakeX",
               "ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "avx2": {"FASTLSTM_ISA": "avx2", "OPENBLAS_CORETYPE": "Haswell",
             "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "generic": {"FASTLSTM_ISA": "generic", "OPENBLAS_CORETYPE": "Prescott",
                "ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


def _apply_bench_isa():
    name = os.environ.get(BENCH_ISA_VAR, "").strip().lower()
    if not name:
        return
    if name not in BENCH_ISA_SETTINGS:
        raise pytest.UsageError(f"{BENCH_ISA_VAR}={name!r}: use one of "
                                f"{', '.join(BENCH_ISA_SETTINGS)}")
    loaded = [m for m in ("numpy", "scipy", "torch") if m in sys.modules]
    if loaded:
        raise pytest.UsageError(f"{BENCH_ISA_VAR} must take effect before {loaded} load; "
                                f"set {BENCH_ISA_SETTINGS[name]} in the shell instead")
    for var, value in BENCH_ISA_SETTINGS[name].items():
        if os.environ.get(var, value).lower() != value.lower():
            raise pytest.UsageError(f"{BENCH_ISA_VAR}={name} sets {var}={value}, but the "
                                    f"environment already has {var}={os.environ[var]}")
        os.environ[var] = value


_apply_bench_isa()

if importlib.util.find_spec("fastlstm") is None:   # built in place, not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BENCH_FILES = "bench_*.py"
BASELINES = (("torch", "vs torch"), ("reference", "vs ref"), ("one direction", "vs 1-dir"))


def pytest_collect_file(file_path, parent):
    """Collect ``bench_*.py`` here even when ``python_files`` does not name the pattern
    (files named on the command line and matching files are left to pytest itself)."""
    if file_path.suffix != ".py" or not fnmatch.fnmatch(file_path.name, BENCH_FILES):
        return None
    if parent.session.isinitpath(file_path) or any(
            fnmatch.fnmatch(file_path.name, p) for p in parent.config.getini("python_files")):
        return None
    return parent.session.gethookproxy(file_path).pytest_pycollect_makemodule(
        module_path=file_path, parent=parent)


class BenchLog:
    """What the summary table needs, one entry per finished (not disabled) benchmark."""

    def __init__(self):
        self.results = []   # dicts: case, threads, mode, impl, mean_s, min_s, flops, gflops
        self.peaks = {}     # threads -> dict(mean=GFLOP/s, best=GFLOP/s) of the sgemm peak
        self.memory = []    # dicts: case, threads, peak_bytes, keep_bytes, ratio

    @staticmethod
    def _times(benchmark):
        stats = getattr(benchmark, "stats", None)          # None under --benchmark-disable
        stats = getattr(stats, "stats", None)
        if stats is None or not stats.data:
            return None
        return stats.mean, stats.min

    def record(self, benchmark, *, case, threads, mode, impl, flops, tokens=None):
        """After ``benchmark(...)``: store the run and put GFLOP/s (mean time) into
        extra_info, and tokens/s when one call processes ``tokens`` tokens. Returns the
        GFLOP/s, or None when the timings are disabled."""
        times = self._times(benchmark)
        if times is None:
            return None
        mean_s, min_s = times
        gflops = flops / mean_s / 1e9
        benchmark.extra_info.update(flops=flops, gflops=gflops,
                                    gflops_best=flops / min_s / 1e9)
        if tokens is not None:
            benchmark.extra_info["tokens_per_s"] = tokens / mean_s
        self.results.append(dict(case=case, threads=threads, mode=mode, impl=impl,
                                 mean_s=mean_s, min_s=min_s, flops=flops, gflops=gflops,
                                 tokens=tokens))
        return gflops

    def record_peak(self, benchmark, *, threads, flops):
        times = self._times(benchmark)
        if times is None:
            return None
        mean_s, min_s = times
        self.peaks[threads] = dict(mean=flops / mean_s / 1e9, best=flops / min_s / 1e9)
        benchmark.extra_info.update(flops=flops, gflops=self.peaks[threads]["mean"],
                                    gflops_best=self.peaks[threads]["best"])
        return self.peaks[threads]["mean"]

    def record_memory(self, benchmark, *, case, threads, peak_bytes, keep_bytes):
        """A measurement, recorded even under --benchmark-disable (it needs no timing)."""
        ratio = peak_bytes / keep_bytes
        benchmark.extra_info.update(peak_bytes=peak_bytes, keep_bytes=keep_bytes,
                                    mem_ratio=ratio)
        self.memory.append(dict(case=case, threads=threads, peak_bytes=peak_bytes,
                                keep_bytes=keep_bytes, ratio=ratio))
        return ratio


_LOG = pytest.StashKey[BenchLog]()


def pytest_configure(config):
    config.stash[_LOG] = BenchLog()
    # tests/conftest.py is also a top-level module named "conftest", which test modules
    # there import helpers from; pytest drops the cached one before loading this file, so
    # hand the name back (nothing here is imported by name) and `pytest tests benchmarks`
    # keeps working in either order.
    if getattr(sys.modules.get("conftest"), "__file__", None) == __file__:
        del sys.modules["conftest"]


@pytest.fixture
def bench_log(request):
    """The session's BenchLog: call ``bench_log.record(benchmark, ...)`` after the run."""
    return request.config.stash[_LOG]


@pytest.fixture
def sgemm_peak(benchmark, bench_log):
    """``sgemm_peak(threads)`` measures the ceiling the kernels are compared with:
    scipy's BLAS (the one the compiled kernels call) on a 1024^3 float32 product, BLAS
    limited to ``threads``; the summary's %peak column divides by it."""
    import numpy as np
    from scipy.linalg.blas import sgemm
    from threadpoolctl import threadpool_limits

    def measure(threads):
        rng = np.random.default_rng(0)
        n = 1024
        A = np.asfortranarray(rng.standard_normal((n, n)), dtype=np.float32)
        Bm = np.asfortranarray(rng.standard_normal((n, n)), dtype=np.float32)
        C = np.zeros((n, n), np.float32, order="F")

        def run():
            sgemm(1.0, A, Bm, beta=0.0, c=C, overwrite_c=1)

        flops = 2 * n ** 3
        benchmark.group = "sgemm 1024^3 float32 (scipy BLAS)"
        benchmark.extra_info.update(M=n, N=n, K=n, threads=threads, impl="scipy sgemm",
                                    flops=flops)
        with threadpool_limits(limits=threads, user_api="blas"):
            run()    # warm-up: BLAS thread start-up and buffers
            benchmark(run)
        return bench_log.record_peak(benchmark, threads=threads, flops=flops)
    return measure


def _banner(tr):
    import numpy as np
    import scipy
    from threadpoolctl import threadpool_info
    parts = [f"NumPy {np.__version__}", f"SciPy {scipy.__version__}"]
    try:
        import fastlstm
        parts.insert(0, f"fastlstm {fastlstm.__version__}")
    except ImportError:                                   # pragma: no cover
        pass
    if "torch" in sys.modules:
        parts.append(f"torch {sys.modules['torch'].__version__}")
    else:
        parts.append("torch not imported (absent or not run)")
    tr.write_line(", ".join(parts))
    blas = sorted({f"{i['internal_api']} {i.get('version')} ({i.get('architecture', '?')})"
                   for i in threadpool_info() if i.get("user_api") == "blas"})
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count())
    tr.write_line(f"BLAS: {'; '.join(blas) or '?'}; {platform.machine()}, {cores} usable cores")
    tr.write_line(_isa_line())


def _isa_line():
    """The CPU model and the instruction set each library ran."""
    from threadpoolctl import threadpool_info
    parts = []
    try:
        import fastlstm
        info = fastlstm.config()
        cpu = info["cpu"]
        parts.append(f"fastlstm {info['isa']} (best here {info['isa_best']})")
    except (ImportError, KeyError):                       # pragma: no cover
        cpu = platform.processor() or "?"
    cores = sorted({i.get("architecture", "?") for i in threadpool_info()
                    if i.get("internal_api") == "openblas"})
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    parts.append(f"OpenBLAS core {'/'.join(cores) or '?'}"
                 + (f" (OPENBLAS_CORETYPE={coretype})" if coretype else ""))
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        try:
            cap = torch.backends.cpu.get_cpu_capability()
        except AttributeError:                            # pragma: no cover
            cap = "?"
        parts.append(f"torch {cap}")
    forced = os.environ.get(BENCH_ISA_VAR)
    return (f"CPU: {cpu}; ISA: " + ", ".join(parts)
            + (f"; forced by {BENCH_ISA_VAR}={forced}" if forced else ""))


def _speedups(r, by_key):
    """Row ``r``'s speedup columns: each baseline's mean time over r's, same case, thread
    count and mode (blank where there is none, or r is that baseline)."""
    cols = []
    for impl, _ in BASELINES:
        other = by_key.get((r["case"], r["threads"], r["mode"], impl))
        cols.append(f"{other['mean_s'] / r['mean_s']:>10.2f}"
                    if other is not None and impl != r["impl"] else " " * 10)
    return "".join(cols)


def _throughput_table(tr, log, by_key):
    rows = [r for r in log.results if r.get("tokens")]
    if not rows:
        return
    tr.write_line("")
    tr.write_line("training throughput: tokens/s from the mean time of one step "
                  "(speedup = this row's tokens/s / the other's)")
    header = (f"{'case':<21}{'thr':>4}  {'impl':<11}{'tokens/s':>12}"
              + "".join(f"{label:>10}" for _, label in BASELINES))
    tr.write_line(header)
    tr.write_line("-" * len(header))
    for r in rows:
        tr.write_line(f"{r['case']:<21}{r['threads']:>4}  {r['impl']:<11}"
                      f"{r['tokens'] / r['mean_s']:>12,.0f}" + _speedups(r, by_key))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    log = config.stash.get(_LOG, None)
    if log is None or not (log.results or log.memory or log.peaks):
        return
    tr = terminalreporter
    tr.section("fastlstm benchmarks: compiled vs NumPy reference vs torch (float32)")
    try:
        _banner(tr)
    except Exception as exc:                              # pragma: no cover
        tr.write_line(f"(no banner: {exc!r})")
    for n, peak in sorted(log.peaks.items()):
        tr.write_line(f"sgemm 1024^3 peak (scipy BLAS, {n} thread{'s' * (n > 1)}): "
                      f"{peak['mean']:.1f} GFLOP/s mean, {peak['best']:.1f} best round")
    if log.results:
        by_key = {(r["case"], r["threads"], r["mode"], r["impl"]): r for r in log.results}
        tr.write_line("GFLOP/s and speedups from the mean time; speedup = the other's mean "
                      "/ this row's mean (> 1: this row is faster); %peak vs the sgemm mean")
        header = (f"{'case':<21}{'thr':>4}  {'mode':<18}{'impl':<11}{'mean ms':>10}"
                  f"{'min ms':>10}{'GFLOP/s':>9}{'%peak':>7}"
                  + "".join(f"{label:>10}" for _, label in BASELINES))
        tr.write_line(header)
        tr.write_line("-" * len(header))
        for r in log.results:
            peak = log.peaks.get(r["threads"])
            share = f"{100 * r['gflops'] / peak['mean']:6.0f}%" if peak else " " * 7
            tr.write_line(f"{r['case']:<21}{r['threads']:>4}  {r['mode']:<18}{r['impl']:<11}"
                          f"{r['mean_s'] * 1e3:>10.3f}{r['min_s'] * 1e3:>10.3f}"
                          f"{r['gflops']:>9.2f}{share}" + _speedups(r, by_key))
        _throughput_table(tr, log, by_key)
    else:
        tr.write_line("timings disabled (--benchmark-disable): no speed table")
    if log.memory:
        tr.write_line("")
        tr.write_line("memory of one compiled forward+backward: tracemalloc peak vs the arrays "
                      "that must be kept")
        tr.write_line("(keep = gates (T,B,4H) + h, c states 2x(T+1,B,H) + dx, dh0, dc0, "
                      "dW_x, dW_h, db; the peak may add the forward's output hs (T,B,H) or the "
                      "backward's gate-gradient chunk)")
        header = f"{'case':<21}{'thr':>4}{'peak MB':>11}{'keep MB':>11}{'ratio':>8}"
        tr.write_line(header)
        tr.write_line("-" * len(header))
        for m in log.memory:
            tr.write_line(f"{m['case']:<21}{m['threads']:>4}{m['peak_bytes'] / 1e6:>11.3f}"
                          f"{m['keep_bytes'] / 1e6:>11.3f}{m['ratio']:>8.3f}")
