"""Data-parallel training over MPI with real processes (``mpiexec -n 2``, this machine):
ranks stay bitwise identical and equal one process on the whole batch; a failing rank
ends the job; the CLI trains data-parallel. Skipped without the ``mpi`` extra."""
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastlstm
from fastlstm import distributed
from conftest import child_env as shared_child_env

pytest.importorskip("mpi4py", reason="the mpi extra (mpi4py, an MPI) is not installed")
MPIEXEC = shutil.which("mpiexec")
pytestmark = [pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH"),
              pytest.mark.slow]
WORKER = pathlib.Path(__file__).with_name("mpi_worker.py")
TEXT = ("the quick brown fox jumps over the lazy dog. a stitch in time saves nine! "
        "all that glitters is not gold.\n") * 10


def child_env():
    return shared_child_env(OMP_NUM_THREADS="1")


def run(cmd, cwd, timeout=180):
    return subprocess.run(cmd, cwd=cwd, env=child_env(), capture_output=True, text=True,
                          timeout=timeout)


def mpi(n, *args, cwd, timeout=180):
    return run([MPIEXEC, "-n", str(n), sys.executable, *map(str, args)], cwd, timeout)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.parametrize("mode", ["lm", "classifier"])
def test_ranks_agree_bitwise_and_equal_one_process_on_the_whole_batch(tmp_path, mode):
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    ok(mpi(2, WORKER, mode, two, cwd=tmp_path))
    ok(run([sys.executable, str(WORKER), mode, str(one), "2"], tmp_path))
    r0, r1 = dict(np.load(two / "rank0.npz")), dict(np.load(two / "rank1.npz"))
    single = dict(np.load(one / "rank0.npz"))
    assert r0.keys() == r1.keys() == single.keys()
    assert len(r0["losses"]) >= 5
    for k in r0:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=f"ranks differ in {k}")
        np.testing.assert_allclose(r0[k], single[k], rtol=1e-5, atol=2e-6,
                                   err_msg=f"2 ranks vs 1 process: {k}")
    # the training moved the weights (not two copies of an untouched model)
    assert not np.allclose(r0["losses"][0], r0["losses"][-1])


@pytest.mark.parametrize("mode", ["die", "raise"])
def test_a_failing_rank_ends_the_job(tmp_path, mode):
    proc = mpi(2, WORKER, mode, tmp_path, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    if mode == "raise":
        assert "rank 1 fails on purpose" in proc.stderr


def test_cli_trains_data_parallel_like_one_process_on_twice_the_batch(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    common = ["train", "char", "--text", text, "--steps", 20, "--hidden", 12, "--seq", 8,
              "--sample-every", 10, "--sample-length", 10, "--threads", 1, "--seed", 5,
              "--no-progress"]
    two = ok(mpi(2, "-m", "fastlstm", *common, "--batch", 3, "--out", tmp_path / "two",
                 cwd=tmp_path))
    ok(run([sys.executable, "-m", "fastlstm", *map(str, common), "--batch", "6",
            "--out", str(tmp_path / "one")], tmp_path))
    out = two.stdout
    assert out.count("done: 20 steps") == 1 and out.count("--- sample at step 10") == 1
    assert "data-parallel over 2 processes (global batch 6)" in out
    a = fastlstm.load(tmp_path / "two" / "checkpoint.npz").model.state_dict()
    b = fastlstm.load(tmp_path / "one" / "checkpoint.npz").model.state_dict()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)
    # resumed by two ranks from rank 0's checkpoint
    more = ok(mpi(2, "-m", "fastlstm", "train", "char", "--out", tmp_path / "two",
                  "--resume", "--steps", 25, "--no-progress", cwd=tmp_path)).stdout
    assert "resuming at step 20 of 25" in more and more.count("done: 25 steps") == 1
    # ... but not by one process: the global batch and the data order would change
    alone = run([sys.executable, "-m", "fastlstm", "train", "char", "--out",
                 str(tmp_path / "two"), "--resume", "--steps", "30", "--no-progress"],
                tmp_path)
    assert alone.returncode == 1
    assert "trained on 2 processes; resume it on as many (mpiexec -n 2), not 1" in alone.stderr


def endless_mpi_run(tmp_path, run_dir):
    """Two ranks training until stopped, once they have logged five steps."""
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    proc = subprocess.Popen(
        [MPIEXEC, "-n", "2", sys.executable, "-m", "fastlstm", "train", "char", "--text",
         str(text), "--hidden", "8", "--seq", "8", "--batch", "2", "--threads", "1",
         "--steps", "10000000", "--sample-every", "0", "--log-every", "1",
         "--save-every", "10000000", "--no-progress", "--out", str(run_dir)],
        cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "log.csv").exists() or \
            len((run_dir / "log.csv").read_text().splitlines()) < 5:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"training did not start: {proc.communicate()}")
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_to_mpiexec_stops_every_rank_after_one_checkpoint(tmp_path, signame):
    run_dir = tmp_path / "run"
    proc = endless_mpi_run(tmp_path, run_dir)
    try:
        proc.send_signal(getattr(signal, signame))   # mpiexec forwards it to the ranks
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + getattr(signal, signame), (out, err)
    assert out.count("stopped at step") == 1 and f"({signame})" in out
    step = fastlstm.load(run_dir / "checkpoint.npz").metadata["step"]
    assert 4 <= step < 10000000


def test_a_single_process_needs_no_mpi():
    ctx = distributed.Context()
    assert (ctx.rank, ctx.size, ctx.is_root) == (0, 1, True)
    assert ctx.shard(7) == slice(0, 7)
    np.testing.assert_array_equal(ctx.sum([1.5, 2]), [1.5, 2])


def _rank_pids(marker):
    """{rank: pid} of the processes whose command line holds ``marker`` (Linux /proc)."""
    found = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() not in cmdline or b"fastlstm" not in cmdline:
            continue
        for item in environ:
            if item.startswith(b"PMI_RANK="):
                found[int(item[len(b"PMI_RANK="):])] = int(entry.name)
    return found


@pytest.mark.skipif(not pathlib.Path("/proc/self/environ").exists(), reason="needs /proc")
def test_sigterm_to_one_rank_stops_every_rank_with_its_exit_status(tmp_path):
    run_dir = tmp_path / "run-one-rank"
    proc = endless_mpi_run(tmp_path, run_dir)
    try:
        ranks = _rank_pids(str(run_dir))
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGTERM)          # rank 1 alone, as a scheduler might
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert out.count("stopped at step") == 1 and "(SIGTERM)" in out
    step = fastlstm.load(run_dir / "checkpoint.npz").metadata["step"]
    assert 4 <= step < 10000000
