"""No run loses a user's work: locked run directories, signals that checkpoint, resumes
from elsewhere or after the data moved, non-finite numbers, options checked before any
work, leftovers of killed saves, hand-edited metadata. Real processes throughout."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastlstm
from fastlstm import training
from test_cli import TEXT, TINY, child_env, fastlstm_cli


def log_rows(run):
    """log.csv's rows, numbers as floats and blanks as None."""
    return training.RunDirectory(run).read_log()

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


def endless_run(run, text, cwd, *extra):
    """A training run that goes on until stopped, logging every step."""
    return subprocess.Popen(
        [sys.executable, "-m", "fastlstm", "train", "char", "--text", str(text),
         "--steps", "1000000", "--out", str(run), "--log-every", "1", "--sample-every", "0",
         "--save-every", "1000000", *TINY, *extra], cwd=cwd, env=child_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(proc, run, n, timeout=120):
    deadline = time.monotonic() + timeout
    while not (run / "log.csv").exists() or len(log_rows(run)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)


def finish(proc, timeout=120):
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


# --- signals -----------------------------------------------------------------------------

@pytest.mark.slow
@posix_only
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_write_a_checkpoint_and_exit_128_plus_the_signal(
        tmp_path, text_file, signame):
    run = tmp_path / "run"
    proc = endless_run(run, text_file, tmp_path)
    try:
        wait_for_rows(proc, run, 5)
        assert not (run / "checkpoint.npz").exists()      # --save-every is far away
        proc.send_signal(getattr(signal, signame))
    finally:
        out, err = finish(proc)
    signum = getattr(signal, signame)
    assert proc.returncode == 128 + signum, (out, err)
    assert "stopped at step" in out and f"({signame})" in out and "--resume" in out
    step = fastlstm.load(run / "checkpoint.npz").metadata["step"]
    assert step >= 5 and max(r["step"] for r in log_rows(run)) == step
    more = fastlstm_cli("train", "char", "--out", run, "--resume", "--steps", step + 2,
                        "--no-progress", cwd=tmp_path).stdout
    assert f"resuming at step {step} of {step + 2}" in more and f"done: {step + 2}" in more


@pytest.mark.slow
@posix_only
def test_a_second_sigterm_ends_the_run_at_once_and_the_lock_goes_with_it(tmp_path,
                                                                        text_file):
    run = tmp_path / "run"
    proc = endless_run(run, text_file, tmp_path)
    try:
        wait_for_rows(proc, run, 3)
        # Two signals in a row: the second arrives before the step ends (or during the
        # save), and the process dies of it.
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
    finally:
        finish(proc)
    assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM)
    if (run / "checkpoint.npz").exists():              # the save, if it ran, is whole
        fastlstm.load(run / "checkpoint.npz")
    # The lock died with the process: a new run can take the directory.
    fastlstm_cli("train", "char", "--text", text_file, "--out", run, "--overwrite",
                 "--steps", 2, "--sample-every", 0, *TINY, cwd=tmp_path)


# --- one run per directory ---------------------------------------------------------------

@pytest.mark.slow
@posix_only
def test_a_live_run_locks_its_directory_against_a_second_run_and_a_resume(tmp_path,
                                                                         text_file):
    run = tmp_path / "run"
    first = endless_run(run, text_file, tmp_path)
    try:
        wait_for_rows(first, run, 3)
        second = fastlstm_cli("train", "char", "--text", text_file, "--out", run,
                              "--overwrite", "--steps", 5, *TINY, cwd=tmp_path, check=False)
        assert second.returncode == 1
        assert "is in use by a live run" in second.stderr
        assert f"pid {first.pid}" in second.stderr
        rows_before = len(log_rows(run))
        (run / "checkpoint.npz").write_bytes(b"")           # as if a save had happened
        resumed = fastlstm_cli("train", "char", "--out", run, "--resume", "--steps", 9,
                               *TINY, cwd=tmp_path, check=False)
        assert resumed.returncode == 1 and "is in use by a live run" in resumed.stderr
        assert len(log_rows(run)) >= rows_before            # nothing of ours was touched
        first.send_signal(signal.SIGINT)
    finally:
        out, err = finish(first)
    assert first.returncode == 130, (out, err)
    steps = [int(r["step"]) for r in log_rows(run) if r["train_loss"] is not None]
    assert steps == list(range(1, len(steps) + 1))         # one run's rows, in order


def test_a_fresh_run_refuses_a_directory_holding_another_run(tmp_path, text_file):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text("step,epoch\n1,0.1\n")     # a run killed before saving
    proc = fastlstm_cli("train", "char", "--text", text_file, "--out", run, "--steps", 3,
                        "--sample-every", 0, *TINY, cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert "already holds a run (log.csv)" in proc.stderr and "--overwrite" in proc.stderr
    assert (run / "log.csv").read_text() == "step,epoch\n1,0.1\n"
    out = fastlstm_cli("train", "char", "--text", text_file, "--out", run, "--steps", 3,
                       "--sample-every", 0, "--log-every", 1, "--overwrite", *TINY,
                       cwd=tmp_path).stdout
    assert "--overwrite: deleted the earlier run's log.csv" in out
    assert [r["step"] for r in log_rows(run)][:3] == [1, 2, 3]
    both = fastlstm_cli("train", "char", "--out", run, "--resume", "--overwrite", *TINY,
                        cwd=tmp_path, check=False)
    assert both.returncode == 1 and "pass one of them" in both.stderr


def test_resume_drops_log_rows_written_after_the_checkpoint(tmp_path, text_file):
    run = tmp_path / "run"
    fastlstm_cli("train", "char", "--text", text_file, "--out", run, "--steps", 6,
                 "--log-every", 1, "--sample-every", 0, *TINY, cwd=tmp_path)
    # A killed run logged steps 7-9 after its checkpoint (step 6), the last line half
    # written.
    with open(run / "log.csv", "a") as f:
        f.write("7,0.1,100,2.0,,,,0.003,1.0,100\n8,0.1,100,2.0,,,,0.003,1.0,100\n9,0.")
    out = fastlstm_cli("train", "char", "--out", run, "--resume", "--steps", 8,
                       "--log-every", 1, *TINY, cwd=tmp_path).stdout
    assert "log.csv: dropped 3 rows logged after the checkpoint's step 6" in out
    steps = [int(r["step"]) for r in log_rows(run) if r["train_loss"] is not None]
    assert steps == list(range(1, 9))


def test_resume_refuses_a_log_that_is_not_a_fastlstm_log(tmp_path, text_file):
    run = tmp_path / "run"
    fastlstm_cli("train", "char", "--text", text_file, "--out", run, "--steps", 2,
                 "--sample-every", 0, *TINY, cwd=tmp_path)
    (run / "log.csv").write_text("my,own,notes\n")
    proc = fastlstm_cli("train", "char", "--out", run, "--resume", "--steps", 4, *TINY,
                        cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "not those of a fastlstm log" in proc.stderr
    assert (run / "log.csv").read_text() == "my,own,notes\n"


def test_stale_save_temporaries_are_deleted_when_a_run_starts(tmp_path, text_file):
    run = tmp_path / "run"
    fastlstm_cli("train", "char", "--text", text_file, "--out", run, "--steps", 2,
                 "--sample-every", 0, *TINY, cwd=tmp_path)
    for name in ("checkpoint.npz.tmp-99999999", "checkpoint.npz.tmp-12",
                 "loss.png.tmp-4242.png"):
        (run / name).write_bytes(b"\0" * 50_000)
    (run / "notes.tmp-1").write_text("mine")                  # not a save's temporary
    out = fastlstm_cli("train", "char", "--out", run, "--resume", "--steps", 3, *TINY,
                       cwd=tmp_path).stdout
    assert "deleted 3 temporary files (0.1 MB) left by an interrupted save" in out
    assert sorted(p.name for p in run.iterdir() if "tmp" in p.name) == ["notes.tmp-1"]


# --- resuming from elsewhere, data that moved or changed ----------------------------------

def test_resume_from_another_directory_and_after_the_text_moved(tmp_path, text_file):
    work = tmp_path / "work"
    work.mkdir()
    run = tmp_path / "runs" / "a"
    fastlstm_cli("train", "char", "--text", "../text.txt", "--out", "../runs/a", "--steps",
                 3, "--sample-every", 0, *TINY, cwd=work)
    ck = fastlstm.load(run / "checkpoint.npz")
    assert ck.metadata["settings"]["text"] == str(text_file)          # stored absolute
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = fastlstm_cli("train", "char", "--out", "../runs/a", "--resume", "--steps", 4,
                       *TINY, cwd=elsewhere).stdout
    assert "resuming at step 3 of 4" in out
    moved = tmp_path / "moved.txt"
    os.replace(text_file, moved)
    gone = fastlstm_cli("train", "char", "--out", run, "--resume", "--steps", 5, *TINY,
                        cwd=tmp_path, check=False)
    assert gone.returncode == 1
    assert "no such file or directory; pass --text with its new location" in gone.stderr
    out = fastlstm_cli("train", "char", "--out", run, "--resume", "--steps", 5, "--text",
                       "moved.txt", *TINY, cwd=tmp_path).stdout
    assert "resuming at step 4 of 5" in out
    assert fastlstm.load(run / "checkpoint.npz").metadata["settings"]["text"] == str(moved)
    # eval finds the moved text too, and says nothing of a change
    ev = fastlstm_cli("eval", run, cwd=elsewhere)
    assert "validation split" in ev.stdout and "warning" not in ev.stderr


def test_resume_refuses_changed_data_unless_told_and_eval_says_so(tmp_path, text_file):
    run = tmp_path / "run"
    fastlstm_cli("train", "char", "--text", text_file, "--out", run, "--steps", 3,
                 "--sample-every", 0, *TINY, cwd=tmp_path)
    text_file.write_text(TEXT.replace("fox", "cat"))
    proc = fastlstm_cli("train", "char", "--out", run, "--resume", "--steps", 4, *TINY,
                        cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert "is not the data this run was trained on" in proc.stderr
    assert "--allow-changed-data" in proc.stderr
    ev = fastlstm_cli("eval", run, cwd=tmp_path)
    assert "is not the data this model was trained on" in ev.stderr
    out = fastlstm_cli("train", "char", "--out", run, "--resume", "--steps", 4,
                       "--allow-changed-data", *TINY, cwd=tmp_path).stdout
    assert "changed since the checkpoint; going on with it" in out
    ck = fastlstm.load(run / "checkpoint.npz")
    assert "allow_changed_data" not in ck.metadata["settings"]     # not a lasting setting
    # the new content is now the run's: resuming again needs no flag
    fastlstm_cli("train", "char", "--out", run, "--resume", "--steps", 5, *TINY,
                 cwd=tmp_path)
    same = fastlstm_cli("eval", run, "--text", text_file, cwd=tmp_path)
    assert "is the text this model was trained on" in same.stderr


def test_a_sentiment_run_checks_its_reviews_by_content(tmp_path):
    rows = [{"text": f"{'great fine' if i % 2 else 'awful bad'} movie {i}", "label": i % 2}
            for i in range(40)]
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    common = ["--hidden", "8", "--batch", "8", "--threads", "1", "--no-progress"]
    fastlstm_cli("train", "sentiment", "--data", data, "--steps", 2, "--min-freq", 1,
                 "--embedding", 4, "--out", run, *common, cwd=tmp_path)
    moved = tmp_path / "moved.jsonl"
    moved.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data.unlink()
    fastlstm_cli("train", "sentiment", "--out", run, "--resume", "--steps", 3, "--data",
                 moved, *common, cwd=tmp_path)
    rows[3]["label"] = 0                                      # one label edited
    moved.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = fastlstm_cli("train", "sentiment", "--out", run, "--resume", "--steps", 4,
                        *common, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "is not the data this run was trained on" in proc.stderr


# --- non-finite numbers -------------------------------------------------------------------

def test_a_diverging_run_saves_its_last_good_step_and_says_which(tmp_path, text_file):
    run = tmp_path / "run"
    proc = fastlstm_cli("train", "char", "--text", text_file, "--out", run, "--steps", 50,
                        "--optimizer", "sgd", "--lr", "1e38", "--clip", "0", "--sample-every", 0, *TINY,
                        cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "that step was not applied" in proc.stderr
    ck = fastlstm.load(run / "checkpoint.npz")          # finite weights: load checks
    step = ck.metadata["step"]
    assert f"at step {step + 1}" in proc.stderr and f"checkpoint of step {step}" in proc.stderr


def test_fit_never_applies_a_non_finite_step(tmp_path):
    from fastlstm import models, optim
    model = models.CharLM(5, 4, seed=0)
    opt = optim.SGD(model.parameters(), lr=0.1)
    calls = []

    def grad_step(batch):
        model.zero_grad()
        calls.append(batch)
        for p in model.parameters():
            p.grad[...] = 0.01
        if batch == 3:
            model.head.W.grad[0, 0] = np.inf          # a finite loss, an infinite gradient
        return 1.0, 10, 1.0

    before = {}
    run = training.RunDirectory(tmp_path / "run")
    kept = []

    def metadata(step, epoch, extra):
        kept.append({k: v.copy() for k, v in model.state_dict().items()})
        return {"step": step}

    def epoch_batches(epoch, skip):
        for k in range(skip, 10):
            if k == 3:
                before.update({n: v.copy() for n, v in model.state_dict().items()})
            yield k

    with pytest.raises(training.TrainingDiverged, match="gradient's norm became inf") as e:
        training.fit(model, opt,
                     training.Task(epoch_batches=epoch_batches, grad_step=grad_step,
                                   evaluate=lambda: {"valid_loss": 1.0}, metadata=metadata),
                     training.RunConfig(steps=10, steps_per_epoch=10, clip=0,
                                        progress=False),
                     run=run, out=open(os.devnull, "w"))
    assert e.value.step == 3 and calls == [0, 1, 2, 3]
    ck = fastlstm.load(run.checkpoint)
    assert ck.metadata == {"step": 3}
    for name, value in before.items():
        np.testing.assert_array_equal(ck.model.state_dict()[name], value)


@pytest.mark.parametrize("option,value,message", [
    ("--lr", "inf", "argument --lr: must be a finite number, got inf"),
    ("--lr", "nan", "argument --lr: must be a finite number, got nan"),
    ("--lr", "0", "argument --lr: must lie in (0, inf), got 0"),
    ("--clip", "-1", "argument --clip: must lie in [0, inf), got -1"),
    ("--clip", "inf", "argument --clip: must be a finite number"),
    ("--dropout", "1", "argument --dropout: must lie in [0, 1), got 1"),
    ("--valid-fraction", "nan", "argument --valid-fraction: must be a finite number"),
    ("--temperature", "-1", "argument --temperature: must lie in [0, inf), got -1"),
    ("--steps", "0", "argument --steps: must be >= 1, got 0"),
    ("--steps", "2.5", "argument --steps: expected an integer, got '2.5'"),
    ("--batch", "0", "argument --batch: must be >= 1, got 0"),
    ("--seed", "-1", "argument --seed: must be >= 0, got -1"),
    ("--threads", "0", "argument --threads: must be >= 1, got 0"),
    ("--embedding", "-2", "argument --embedding: must be >= 0, got -2"),
    ("--sample-length", "0", "argument --sample-length: must be >= 1, got 0"),
])
def test_train_options_are_checked_before_any_work(tmp_path, text_file, option, value,
                                                   message):
    run = tmp_path / "run"
    proc = fastlstm_cli("train", "char", "--text", text_file, "--out", run, option, value,
                        cwd=tmp_path, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not run.exists()


@pytest.mark.parametrize("argv,message", [
    (["demo", "--steps", "0"], "argument --steps: must be >= 1, got 0"),
    (["demo", "--batch", "0"], "argument --batch: must be >= 1, got 0"),
    (["demo", "--hidden", "-3"], "argument --hidden: must be >= 1, got -3"),
    (["sample", "RUN", "--temperature", "nan"], "argument --temperature: must be a finite"),
    (["sample", "RUN", "--top-k", "0"], "argument --top-k: must be >= 1, got 0"),
    (["sample", "RUN", "--length", "-1"], "argument --length: must be >= 0, got -1"),
    (["eval", "RUN", "--batch", "0"], "argument --batch: must be >= 1, got 0"),
    (["train", "word", "--vocab-size", "3"], "argument --vocab-size: must be >= 4, got 3"),
    (["train", "word", "--bptt-truncate", "-1"], "argument --bptt-truncate: must be >= 0"),
    (["train", "sentiment", "--max-len", "0"], "argument --max-len: must be >= 1, got 0"),
    (["train", "sentiment", "--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
])
def test_every_command_checks_its_options_as_it_parses_them(tmp_path, argv, message):
    proc = fastlstm_cli(*argv, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


# --- hand-edited checkpoints of fastlstm train ---------------------------------------------

def _edit_metadata(path, edit):
    with np.load(path) as raw:
        arrays = {k: raw[k] for k in raw.files}
    config = json.loads(str(arrays["config"]))
    edit(config["metadata"])
    arrays["config"] = np.array(json.dumps(config))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["vocab"].update(itos=m["vocab"]["itos"][:-3]),
     "metadata.vocab has"),
    (lambda m: m["vocab"].update(itos="abc"), "metadata.vocab: expected"),
    (lambda m: m.update(task="poetry"), "metadata.task is 'poetry'"),
    (lambda m: m.update(task="sentiment"), "needs a SentimentClassifier"),
    (lambda m: m.update(step=-1), "metadata.step: expected an integer >= 0"),
    (lambda m: m["settings"].update(batch="32"), "metadata.settings.batch must be a number"),
    (lambda m: m["settings"].update(seq=0), "metadata.settings.seq must be >= 1, got 0"),
    (lambda m: m["settings"].update(valid_fraction=float("nan")),
     "metadata.settings.valid_fraction must be a finite number"),
    (lambda m: m["settings"].pop("seq"), "metadata.settings lacks seq"),
    (lambda m: m["settings"].update(optimizer="lbfgs"),
     "metadata.settings.optimizer must be one of adam, adagrad, sgd"),
    (lambda m: m["settings"].update(cell="gru"),
     "metadata.settings.cell is 'gru', but the model's cell is 'lstm'"),
    (lambda m: m.update(tokens="many"), "metadata.tokens: unexpected value 'many'"),
    (lambda m: m.update(seconds=None), "metadata.seconds: unexpected value None"),
    (lambda m: m.update(data_sha256=5), "metadata.data_sha256: unexpected value 5"),
    (lambda m: m.update(scheduler=[1]), "metadata.scheduler: unexpected value [1]"),
])
def test_sample_eval_and_resume_check_a_hand_edited_run_checkpoint(tmp_path, text_file,
                                                                  edit, message):
    run = tmp_path / "run"
    fastlstm_cli("train", "char", "--text", text_file, "--out", run, "--steps", 2,
                 "--sample-every", 0, *TINY, cwd=tmp_path)
    _edit_metadata(run / "checkpoint.npz", edit)
    for argv in (["sample", run], ["eval", run],
                 ["train", "char", "--out", run, "--resume", "--steps", 3]):
        proc = fastlstm_cli(*argv, cwd=tmp_path, check=False)
        assert proc.returncode == 1, (argv, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (argv, proc.stderr)


@pytest.mark.slow
@posix_only
def test_a_run_started_under_nohup_ignores_sighup(tmp_path, text_file):
    run = tmp_path / "run"

    def ignore_sighup():                      # what nohup does before exec
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastlstm", "train", "char", "--text", str(text_file),
         "--steps", "1000000", "--out", str(run), "--log-every", "1", "--sample-every", "0",
         "--save-every", "1000000", *TINY], cwd=tmp_path, env=child_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ignore_sighup)
    try:
        wait_for_rows(proc, run, 3)
        proc.send_signal(signal.SIGHUP)
        rows = len(log_rows(run))
        wait_for_rows(proc, run, rows + 20)   # still training
        proc.send_signal(signal.SIGTERM)
    finally:
        out, err = finish(proc)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert "(SIGTERM)" in out and "SIGHUP" not in out


def test_overwrite_keeps_the_earlier_run_when_the_new_one_cannot_start(tmp_path,
                                                                       text_file):
    run = tmp_path / "run"
    fastlstm_cli("train", "char", "--text", text_file, "--out", run, "--steps", 2,
                 "--sample-every", 0, *TINY, cwd=tmp_path)
    before = sorted(p.name for p in run.iterdir())
    proc = fastlstm_cli("train", "char", "--text", tmp_path / "typo.txt", "--out", run,
                        "--overwrite", "--steps", 2, *TINY, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "no such file or directory" in proc.stderr
    assert "deleted" not in proc.stdout
    assert sorted(p.name for p in run.iterdir()) == before
    fastlstm.load(run / "checkpoint.npz")


def test_an_update_that_overflows_the_weights_names_the_last_checkpoint(tmp_path,
                                                                        text_file):
    run = tmp_path / "run"
    fastlstm_cli("train", "char", "--text", text_file, "--out", run, "--steps", 2,
                 "--sample-every", 0, *TINY, cwd=tmp_path)
    # Resumed with a learning rate whose first update overflows float32.
    proc = fastlstm_cli("train", "char", "--out", run, "--resume", "--steps", 20,
                        "--lr", "1e300", "--save-every", "1", *TINY, cwd=tmp_path,
                        check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "the update of step 3 made the weights non-finite" in proc.stderr, proc.stderr
    assert f"(step 2, in {run / 'checkpoint.npz'})" in proc.stderr
    assert fastlstm.load(run / "checkpoint.npz").metadata["step"] == 2
    fresh = fastlstm_cli("train", "char", "--text", text_file, "--out", tmp_path / "new",
                         "--steps", 5, "--lr", "1e300", "--sample-every", 0, *TINY,
                         cwd=tmp_path, check=False)
    assert fresh.returncode == 1 and "none has been written yet" in fresh.stderr


def test_a_signal_during_the_last_step_ends_the_run_normally(tmp_path):
    from fastlstm import models, optim
    model = models.CharLM(5, 4, seed=0)
    opt = optim.SGD(model.parameters(), lr=0.1)

    def grad_step(batch):
        model.zero_grad()
        if batch == 2:
            os.kill(os.getpid(), signal.SIGTERM)     # arrives during the last step
        return 1.0, 10, 1.0

    task = training.Task(epoch_batches=lambda epoch, skip: iter(range(skip, 3)),
                         grad_step=grad_step, evaluate=lambda: {"valid_loss": 1.0},
                         metadata=lambda step, epoch, extra: {"step": step})
    config = training.RunConfig(steps=3, steps_per_epoch=3, progress=False)
    result = training.fit(model, opt, task, config, run=training.RunDirectory(tmp_path),
                          out=open(os.devnull, "w"))
    assert result["step"] == 3 and not result["interrupted"] and result["signal"] is None
    assert result["last_eval"] == {"valid_loss": 1.0}
