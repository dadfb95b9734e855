"""Data-parallel scaling of ``fastlstm train char`` over MPI ranks (1 thread each).

Each case trains the char LM with 1 and with 2 ranks under ``mpiexec``, every rank
holding ``--batch`` streams (weak scaling: the global batch grows with the ranks), and
reads the training throughput (tokens/s over all ranks, training steps only) from the
run's log.csv. Scaling efficiency = tokens/s with N ranks / (N x tokens/s with 1).
Skipped without mpi4py / mpiexec. Nothing is asserted about speed.
"""
import csv
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastlstm

pytest.importorskip("mpi4py", reason="the mpi extra is not installed")
MPIEXEC = shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH")

QUICK = os.environ.get("FASTLSTM_BENCH_QUICK") == "1"
# (hidden, seq, batch per rank, steps)
CASES = [(256, 64, 32, 40 if QUICK else 300)] + ([] if QUICK else [(100, 25, 1, 1500),
                                                                  (100, 25, 32, 600)])
RESULTS = {}


def _env():
    env = dict(os.environ)
    parent = str(pathlib.Path(fastlstm.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (parent, env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _train(tmp_path, ranks, hidden, seq, batch, steps):
    out = tmp_path / f"r{ranks}-h{hidden}-b{batch}"
    log_every = max(steps // 10, 1)
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "fastlstm", "train", "char",
           "--hidden", str(hidden), "--seq", str(seq), "--batch", str(batch),
           "--steps", str(steps), "--threads", "1", "--sample-every", "0",
           "--log-every", str(log_every), "--save-every", str(10 * steps),
           "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    with open(out / "log.csv", newline="") as f:
        rates = [float(r["tokens_per_s"]) for r in csv.DictReader(f) if r["tokens_per_s"]]
    return float(np.median(rates[1:] if len(rates) > 2 else rates))   # first: warm-up


@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[f"H{h}-T{t}-B{b}" for h, t, b, _ in CASES])
def test_char_lm_tokens_per_second(benchmark, tmp_path, case, ranks):
    hidden, seq, batch, steps = case
    rate = benchmark.pedantic(_train, args=(tmp_path, ranks, hidden, seq, batch, steps),
                              rounds=1, iterations=1)
    RESULTS[(case, ranks)] = rate
    benchmark.extra_info.update(tokens_per_s=rate, ranks=ranks, threads_per_rank=1)
    line = f"H={hidden} T={seq} B={batch}/rank, {ranks} rank(s): {rate:,.0f} tokens/s"
    if ranks > 1 and (case, 1) in RESULTS:
        efficiency = rate / (ranks * RESULTS[(case, 1)])
        benchmark.extra_info["scaling_efficiency"] = efficiency
        line += f", scaling efficiency {efficiency:.0%}"
    print("\n" + line)
