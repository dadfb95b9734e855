"""The ``fastlstm`` command end to end, in child processes with tiny settings: train
(char, word, sentiment), sample, eval, resume, Ctrl-C, and the errors users meet."""
import csv
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastlstm
from conftest import child_env as shared_child_env

TEXT = ("the quick brown fox jumps over the lazy dog. a stitch in time saves nine! "
        "all that glitters is not gold. the early bird catches the worm.\n") * 12
TINY = ["--hidden", "16", "--seq", "8", "--batch", "4", "--threads", "1", "--no-progress"]


def child_env():
    return shared_child_env(MPLBACKEND="Agg")


def fastlstm_cli(*args, cwd, timeout=300, check=True):
    proc = subprocess.run([sys.executable, "-m", "fastlstm", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=child_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"fastlstm {' '.join(map(str, args))} exited with "
                             f"{proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n"
                             f"{proc.stderr}")
    return proc


def log_rows(run):
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def weights(run):
    model = fastlstm.load(run / "checkpoint.npz").model
    return model.state_dict()


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_version_and_help(tmp_path):
    version = fastlstm_cli("--version", cwd=tmp_path).stdout.strip()
    assert version.startswith(f"fastlstm {fastlstm.__version__} (")
    expected = "compiled kernels" if fastlstm.config()["compiled"] else "NumPy reference only"
    assert expected in version
    usage = fastlstm_cli("train", "char", "--help", cwd=tmp_path).stdout
    for option in ("--text", "--steps", "--out", "--resume", "--seed", "(default: 2500)"):
        assert option in usage
    assert "--cell {lstm,gru,rnn}" in usage and "(default: lstm)" in usage
    assert "--bidirectional" not in usage      # refused with a reason, not offered
    usage = fastlstm_cli("train", "sentiment", "--help", cwd=tmp_path).stdout
    assert "--cell {lstm,gru}" in usage and "--bidirectional" in usage


@pytest.mark.slow
def test_char_train_sample_eval_resume(tmp_path, text_file):
    run = tmp_path / "run"
    proc = fastlstm_cli("train", "char", "--text", text_file, "--steps", 30, "--out", run,
                        "--sample-every", 10, "--sample-length", 20, "--save-every", 10,
                        "--log-every", 5, *TINY, cwd=tmp_path)
    out = proc.stdout
    assert "unigram baseline" in out and "--- sample at step 20 ---" in out
    assert "validation: loss" in out and "done: 30 steps" in out
    assert (run / "checkpoint.npz").is_file()
    try:
        import matplotlib  # noqa: F401
        assert (run / "loss.png").stat().st_size > 1000
    except ImportError:
        assert "pip install matplotlib" in out
    rows = log_rows(run)
    train_rows = [r for r in rows if r["train_loss"]]
    assert [int(r["step"]) for r in train_rows] == [5, 10, 15, 20, 25, 30]
    assert all(float(r["tokens_per_s"]) > 0 for r in train_rows)
    last_valid = [r for r in rows if r["valid_loss"]][-1]
    assert int(last_valid["step"]) == 30

    ck = fastlstm.load(run / "checkpoint.npz")
    assert ck.metadata["step"] == 30 and ck.metadata["task"] == "char"
    assert type(ck.model).__name__ == "CharLM" and ck.optimizer is not None

    # sample: deterministic for a seed, greedy at temperature 0, the prefix echoed
    a = fastlstm_cli("sample", run, "--length", 40, "--seed", 3, cwd=tmp_path).stdout
    b = fastlstm_cli("sample", run / "checkpoint.npz", "--length", 40, "--seed", 3,
                     cwd=tmp_path).stdout
    assert a == b and len(a.rstrip("\n")) >= 30
    g = fastlstm_cli("sample", run, "--prefix", "the q", "--temperature", 0, "--length", 10,
                     cwd=tmp_path).stdout
    assert g.startswith("the q")

    # eval without --text reproduces the last validation loss of the run
    ev = fastlstm_cli("eval", run, cwd=tmp_path).stdout
    assert "validation split" in ev
    loss = float(ev.split("loss ")[1].split()[0])
    assert loss == pytest.approx(float(last_valid["valid_loss"]), rel=1e-4)
    ev_text = fastlstm_cli("eval", run, "--text", text_file, cwd=tmp_path).stdout
    assert "perplexity" in ev_text

    # a second run into the same directory is refused; --resume continues it
    again = fastlstm_cli("train", "char", "--text", text_file, "--out", run, *TINY,
                         cwd=tmp_path, check=False)
    assert again.returncode == 1 and "--resume" in again.stderr
    more = fastlstm_cli("train", "char", "--out", run, "--resume", "--steps", 45,
                        "--log-every", 5, "--no-progress", cwd=tmp_path).stdout
    assert "resuming at step 30 of 45" in more and "done: 45 steps" in more
    assert int(log_rows(run)[-1]["step"]) == 45
    assert fastlstm.load(run / "checkpoint.npz").metadata["step"] == 45
    done = fastlstm_cli("train", "char", "--out", run, "--resume", cwd=tmp_path, check=False)
    assert done.returncode == 1 and "larger --steps" in done.stderr
    changed = fastlstm_cli("train", "char", "--out", run, "--resume", "--steps", 50,
                           "--hidden", 32, cwd=tmp_path, check=False)
    assert changed.returncode == 1 and "--hidden cannot change" in changed.stderr


@pytest.mark.slow
def test_resume_at_an_epoch_end_equals_an_uninterrupted_run(tmp_path, text_file):
    # The carried state restarts at every epoch, so stopping there loses nothing: the
    # model, Adam's moments and the learning-rate schedule all continue exactly.
    n = len(TEXT)
    n_train = n - int(round(n * 0.05))
    per_epoch = -(-((n_train - 1) // 4) // 8)
    whole, split = tmp_path / "whole", tmp_path / "split"
    fastlstm_cli("train", "char", "--text", text_file, "--steps", 2 * per_epoch,
                 "--out", whole, "--sample-every", 0, *TINY, cwd=tmp_path)
    fastlstm_cli("train", "char", "--text", text_file, "--steps", per_epoch,
                 "--out", split, "--sample-every", 0, *TINY, cwd=tmp_path)
    fastlstm_cli("train", "char", "--out", split, "--resume", "--steps", 2 * per_epoch,
                 cwd=tmp_path)
    a, b = weights(whole), weights(split)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_word_lm_with_a_truncated_rnn(tmp_path, text_file):
    run = tmp_path / "word"
    out = fastlstm_cli("train", "word", "--text", text_file, "--cell", "rnn",
                       "--bptt-truncate", 2, "--min-freq", 1, "--embedding", 8, "--steps", 12,
                       "--sample-every", 6, "--sample-length", 8, "--out", run, *TINY,
                       cwd=tmp_path).stdout
    assert "vocabulary" in out and "done: 12 steps" in out
    ck = fastlstm.load(run / "checkpoint.npz")
    assert ck.model.config["cell"] == "rnn" and ck.model.rnn.bptt_truncate == 2
    words = fastlstm_cli("sample", run, "--prefix", "the quick", "--length", 5, "--seed", 0,
                         cwd=tmp_path).stdout
    assert words.startswith("the quick")
    assert "perplexity" in fastlstm_cli("eval", run, cwd=tmp_path).stdout


def _reviews(n, seed):
    rng = np.random.default_rng(seed)
    good, bad = ["great", "wonderful", "superb", "loved"], ["awful", "boring", "terrible",
                                                            "hated"]
    filler = ["the", "movie", "plot", "actors", "was", "and", "it", "this"]
    rows = []
    for i in range(n):
        label = int(rng.integers(0, 2))
        words = list(rng.choice(filler, int(rng.integers(3, 12))))
        words.insert(int(rng.integers(0, len(words) + 1)), rng.choice(good if label else bad))
        rows.append((" ".join(words), label))
    return rows


@pytest.mark.slow
def test_sentiment_from_jsonl_csv_and_aclimdb(tmp_path):
    rows = _reviews(400, 0)
    jsonl = tmp_path / "reviews.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    run = tmp_path / "sent"
    out = fastlstm_cli("train", "sentiment", "--data", jsonl, "--epochs", 6, "--hidden", 16,
                       "--embedding", 16, "--batch", 16, "--lr", 0.01, "--min-freq", 1,
                       "--out", run, "--threads", 1, "--no-progress", cwd=tmp_path).stdout
    assert "360 training and 40 validation reviews" in out
    accuracy = float(out.split("accuracy ")[-1].split()[0])
    assert accuracy >= 0.95, out
    ev = fastlstm_cli("eval", run, cwd=tmp_path).stdout
    assert "40 reviews" in ev and "accuracy" in ev

    csv_path = tmp_path / "more.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        for t, y in _reviews(100, 1):
            w.writerow(["pos" if y else "neg", t])
    ev_csv = fastlstm_cli("eval", run, "--data", csv_path, cwd=tmp_path).stdout
    assert "100 reviews" in ev_csv
    assert float(ev_csv.split("accuracy ")[1].rstrip("%\n")) >= 90

    imdb = tmp_path / "aclImdb"
    for split, seed in (("train", 2), ("test", 3)):
        for k, (t, y) in enumerate(_reviews(40, seed)):
            folder = imdb / split / ("pos" if y else "neg")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{k}_x.txt").write_text(t)
    out = fastlstm_cli("train", "sentiment", "--data", imdb, "--steps", 4, "--hidden", 8,
                       "--embedding", 8, "--batch", 16, "--out", tmp_path / "imdb",
                       "--threads", 1, "--no-progress", cwd=tmp_path).stdout
    assert "40 training and 40 validation reviews" in out and "done: 4 steps" in out
    sample = fastlstm_cli("sample", tmp_path / "imdb", cwd=tmp_path, check=False)
    assert sample.returncode == 1 and "sentiment classifier" in sample.stderr


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="sends a POSIX SIGINT to the child")
def test_ctrl_c_writes_a_complete_checkpoint(tmp_path, text_file):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastlstm", "train", "char", "--text", str(text_file),
         "--steps", "1000000", "--out", str(run), "--log-every", "1", "--sample-every", "0",
         "--save-every", "1000000", *TINY], cwd=tmp_path, env=child_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "log.csv").exists() or len(log_rows(run)) < 5:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        assert not (run / "checkpoint.npz").exists()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "stopped at step" in out and "--resume" in out
    ck = fastlstm.load(run / "checkpoint.npz")
    step = ck.metadata["step"]
    assert 5 <= step < 1000000
    assert int(log_rows(run)[-1]["step"]) <= step
    more = fastlstm_cli("train", "char", "--out", run, "--resume", "--steps", step + 3,
                        cwd=tmp_path).stdout
    assert f"done: {step + 3} steps" in more


def test_errors_name_the_problem(tmp_path, text_file):
    def fails(*args):
        proc = fastlstm_cli(*args, cwd=tmp_path, check=False)
        assert proc.returncode != 0
        return proc.stderr

    assert "argument --steps: must be >= 1, got 0" in fails("train", "char", "--text", text_file,
                                           "--steps", 0, "--out", tmp_path / "a")
    assert not (tmp_path / "a").exists()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nstill fine\n\xff\xfe broken\n")
    assert f"{bad}:3: not UTF-8" in fails("train", "char", "--text", bad,
                                          "--out", tmp_path / "b")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert "empty" in fails("train", "char", "--text", empty, "--out", tmp_path / "c")
    assert "needs --data" in fails("train", "sentiment", "--out", tmp_path / "d")
    assert "does not exist" in fails("train", "char", "--out", tmp_path / "e", "--resume")
    assert "no such checkpoint" in fails("sample", tmp_path / "nothing")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    assert "not a readable fastlstm checkpoint" in fails("eval", junk)
    assert "required" in fails("train")
    assert "invalid choice" in fails("train", "char", "--optimizer", "rmsprop")


@pytest.mark.slow
def test_sentiment_with_frozen_glove_vectors(tmp_path):
    rows = _reviews(120, 4)
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    rng = np.random.default_rng(0)
    vectors = {w: rng.standard_normal(6).round(4) for w in
               ("great", "awful", "movie", "the", "unrelated")}
    glove = tmp_path / "glove.txt"
    glove.write_text("".join(w + " " + " ".join(map(str, v)) + "\n"
                             for w, v in vectors.items()))
    run = tmp_path / "run"
    out = fastlstm_cli("train", "sentiment", "--data", data, "--glove", glove,
                       "--freeze-embedding", "--steps", 5, "--hidden", 8, "--batch", 16,
                       "--min-freq", 1, "--out", run, "--threads", 1, "--no-progress",
                       cwd=tmp_path).stdout
    assert "6-dimensional vectors" in out
    ck = fastlstm.load(run / "checkpoint.npz")
    from fastlstm.data import Vocab
    vocab = Vocab.from_dict(ck.metadata["vocab"])
    table = ck.model.embed.weight.data
    assert table.shape[1] == 6
    for word in ("great", "awful", "movie", "the"):
        np.testing.assert_allclose(table[vocab.stoi[word]], vectors[word], rtol=1e-6)


# --- every cell ---------------------------------------------------------------------------

def in_process(*args):
    """``fastlstm ARGS`` run by ``cli.main`` in this process (no interpreter to start):
    (exit status, stdout, stderr)."""
    import contextlib
    import io
    from fastlstm import cli
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


CELL_RUNS = [("char", "lstm", False), ("char", "gru", False), ("char", "rnn", False),
             ("word", "lstm", False), ("word", "gru", False), ("word", "rnn", False),
             ("sentiment", "lstm", True), ("sentiment", "gru", False),
             ("sentiment", "gru", True)]


@pytest.mark.slow
@pytest.mark.parametrize("task,cell,bidirectional", CELL_RUNS,
                         ids=[f"{t}-{'bi' * b}{c}" for t, c, b in CELL_RUNS])
def test_every_cell_trains_resumes_samples_and_evaluates(tmp_path, text_file, task, cell,
                                                         bidirectional):
    run = tmp_path / "run"
    if task == "sentiment":
        data = tmp_path / "reviews.jsonl"
        data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                                for t, y in _reviews(120, 5)))
        options = ["--data", data, "--hidden", 8, "--embedding", 8, "--batch", 16,
                   "--lr", 0.02, "--min-freq", 1, "--pooling", "last", "--threads", 1,
                   "--no-progress"]
    else:
        options = ["--text", text_file, "--sample-every", 6, "--sample-length", 10, *TINY]
        if task == "word":
            options += ["--min-freq", 1, "--embedding", 8]
    out = fastlstm_cli("train", task, "--cell", cell, *["--bidirectional"] * bidirectional,
                       "--steps", 12, "--save-every", 6, "--log-every", 3, "--out", run,
                       *options, cwd=tmp_path).stdout
    kind = "bidirectional " * bidirectional + cell.upper()
    assert f"({kind}), " in out and "done: 12 steps" in out, out
    losses = [float(r["train_loss"]) for r in log_rows(run) if r["train_loss"]]
    assert len(losses) == 4 and np.isfinite(losses).all() and losses[-1] < losses[0], losses
    ck = fastlstm.load(run / "checkpoint.npz")
    assert ck.model.config["cell"] == cell and ck.metadata["settings"]["cell"] == cell
    if task == "sentiment":
        assert ck.model.config["bidirectional"] is bidirectional
        assert ck.metadata["settings"]["bidirectional"] is bidirectional

    more = fastlstm_cli("train", task, "--out", run, "--resume", "--steps", 15,
                        "--no-progress", cwd=tmp_path).stdout
    assert "resuming at step 12 of 15" in more and f"({kind}), " in more
    assert "done: 15 steps" in more, more
    ck = fastlstm.load(run / "checkpoint.npz")
    assert ck.metadata["step"] == 15 and ck.model.config["cell"] == cell

    # eval rebuilds the same model: it reproduces the run's last validation loss
    status, ev, _ = in_process("eval", run)
    assert status == 0 and "validation split" in ev
    last_valid = [r for r in log_rows(run) if r["valid_loss"]][-1]
    assert int(last_valid["step"]) == 15
    assert float(ev.split("loss ")[1].split()[0].rstrip(",")) == pytest.approx(
        float(last_valid["valid_loss"]), rel=1e-4)
    if task != "sentiment":
        prefix = "the q" if task == "char" else "the quick"
        status, a, _ = in_process("sample", run, "--prefix", prefix, "--length", 8,
                                  "--seed", 1)
        assert status == 0 and a.startswith(prefix) and len(a) > len(prefix) + 1
        assert in_process("sample", run, "--prefix", prefix, "--length", 8,
                          "--seed", 1)[1] == a


@pytest.mark.parametrize("argv,message", [
    (["char", "--bidirectional"], "argument --bidirectional: a language model predicts"),
    (["word", "--bidirectional", "--cell", "gru"],
     "argument --bidirectional: a language model predicts"),
    (["word", "--bptt-truncate", 2],
     "argument --bptt-truncate: truncates a vanilla RNN's backward pass: it needs --cell "
     "rnn, not lstm"),
    (["word", "--cell", "gru", "--bptt-truncate", 2], "it needs --cell rnn, not gru"),
    (["word", "--resume", "--cell", "lstm", "--bptt-truncate", 2],
     "it needs --cell rnn, not lstm"),
    (["sentiment", "--cell", "rnn"], "argument --cell: invalid choice: 'rnn'"),
    (["char", "--cell", "transformer"], "argument --cell: invalid choice"),
])
def test_cell_options_that_cannot_go_together_are_refused_as_parsed(tmp_path, argv, message):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        in_process("train", *argv, "--out", run)
    assert exit_info.value.code == 2
    proc = fastlstm_cli("train", *argv, "--out", run, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not run.exists()


@pytest.mark.slow
def test_resume_refuses_another_cell_or_direction(tmp_path, text_file):
    run = tmp_path / "run"
    fastlstm_cli("train", "char", "--text", text_file, "--steps", 2, "--out", run,
                 "--sample-every", 0, *TINY, cwd=tmp_path)
    status, _, err = in_process("train", "char", "--out", run, "--resume", "--steps", 3,
                                "--cell", "gru")
    assert status == 1 and "--cell cannot change when resuming" in err
    assert "the run has --cell lstm" in err

    # A run of a version without --cell stored neither setting nor config field: its
    # model's (an LSTM) stands in, so another cell is still refused.
    path = run / "checkpoint.npz"
    with np.load(path) as raw:
        arrays = {k: raw[k] for k in raw.files}
    config = json.loads(str(arrays["config"]))
    del config["model"]["config"]["cell"], config["metadata"]["settings"]["cell"]
    arrays["config"] = np.array(json.dumps(config))
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    status, _, err = in_process("train", "char", "--out", run, "--resume", "--steps", 3,
                                "--cell", "rnn")
    assert status == 1 and "the run has --cell lstm" in err, err
    status, out, _ = in_process("train", "char", "--out", run, "--resume", "--steps", 3,
                                "--no-progress")
    assert status == 0 and "(LSTM)" in out and "done: 3 steps" in out
    assert fastlstm.load(path).metadata["settings"]["cell"] == "lstm"

    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                            for t, y in _reviews(40, 6)))
    sentiment = tmp_path / "sentiment"
    status, _, _ = in_process("train", "sentiment", "--data", data, "--steps", 2,
                              "--hidden", 4, "--embedding", 4, "--min-freq", 1, "--out",
                              sentiment, "--threads", 1, "--no-progress")
    assert status == 0
    status, _, err = in_process("train", "sentiment", "--out", sentiment, "--resume",
                                "--steps", 3, "--bidirectional")
    assert status == 1 and "--bidirectional cannot change when resuming" in err
    assert "the run has no --bidirectional" in err
