"""Collects every benchmark's best round and prints one comparison table at the end:
GFLOP/s, the ratios over torch.nn.LSTM and over the NumPy reference at the same thread
count, the share of the sgemm peak, and the memory measurements."""
import os
import platform

import numpy as np

RESULTS = []       # dicts: case, threads, mode, impl, best_s, median_s, flops
PEAKS = {}         # threads -> sgemm GFLOP/s on 1024^3
MEMORY = []        # dicts: case, peak_bytes, keep_bytes


def record(benchmark, **info):
    """Store the finished benchmark's best and median round (nothing when
    --benchmark-disable). The table uses the best round: on a shared virtual machine the
    host's noise only ever adds time, so the minimum is the steadiest comparison."""
    stats = getattr(benchmark, "stats", None)
    if stats is None or getattr(stats, "stats", None) is None:
        return
    info["best_s"] = stats.stats.min
    info["median_s"] = stats.stats.median
    RESULTS.append(info)
    if "flops" in info:
        benchmark.extra_info["gflops"] = info["flops"] / info["best_s"] / 1e9


def _case_name(T, B, D, H):
    return f"T{T} B{B} D{D} H{H}"


def pytest_terminal_summary(terminalreporter):
    if not RESULTS and not MEMORY:
        return
    tr = terminalreporter
    tr.section("fastlstm: compiled vs NumPy reference vs torch.nn (float32)")
    try:
        import scipy
        import fastlstm
        from fastlstm._threads import blas_info
        blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']})"
                         for b in blas_info())
        tr.write_line(f"fastlstm {fastlstm.__version__}, NumPy {np.__version__}, "
                      f"SciPy {scipy.__version__}, BLAS: {blas}; {platform.processor() or platform.machine()}, "
                      f"{os.cpu_count()} CPUs")
    except Exception:  # pragma: no cover - the table matters more than the banner
        pass
    try:
        import torch
        tr.write_line(f"torch {torch.__version__}")
    except ImportError:
        tr.write_line("torch not installed: no torch column")
    for n, gf in sorted(PEAKS.items()):
        tr.write_line(f"sgemm 1024^3 peak (scipy BLAS, {n} thread{'s' * (n > 1)}): {gf:.1f} GFLOP/s")
    by_key = {(r["case"], r["threads"], r["mode"], r["impl"]): r for r in RESULTS}
    tr.write_line("best round of each benchmark (median in brackets); ratios = other's time "
                  "/ fastlstm's")
    header = (f"{'case':<22}{'thr':>4} {'mode':<17}{'impl':<10}{'best ms':>9}{'(median)':>10}"
              f"{'GFLOP/s':>9}{'%peak':>7}{'x torch':>9}{'x ref':>8}")
    tr.write_line(header)
    tr.write_line("-" * len(header))
    for r in RESULTS:
        gflops = r["flops"] / r["best_s"] / 1e9
        peak = PEAKS.get(r["threads"])
        share = f"{100 * gflops / peak:6.0f}%" if peak else "      "
        ratios = []
        for other in ("torch", "reference"):
            o = by_key.get((r["case"], r["threads"], r["mode"], other))
            ratios.append(f"{o['best_s'] / r['best_s']:.2f}" if o and r["impl"] == "fastlstm"
                          else "")
        tr.write_line(f"{r['case']:<22}{r['threads']:>4} {r['mode']:<17}{r['impl']:<10}"
                      f"{r['best_s'] * 1e3:>9.3f}{'(%.3f)' % (r['median_s'] * 1e3):>10}"
                      f"{gflops:>9.1f}{share}{ratios[0]:>9}{ratios[1]:>8}")
    if MEMORY:
        tr.write_line("")
        tr.write_line("memory of one compiled forward+backward (tracemalloc peak) vs the arrays "
                      "it must keep (gates, h and c states, gradients):")
        for m in MEMORY:
            tr.write_line(f"  {m['case']:<22} peak {m['peak_bytes'] / 1e6:9.2f} MB  keep "
                          f"{m['keep_bytes'] / 1e6:9.2f} MB  ratio {m['peak_bytes'] / m['keep_bytes']:.3f}")
