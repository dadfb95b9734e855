"""The training loop behind ``fastlstm train``: steps, validation, checkpoints, logs.

``fit`` runs any model whose one training step is a function of a batch; the language
models and the sentiment classifier differ only in their batches, their step and their
evaluation (``lm_*`` and ``classifier_*`` below), which a ``Task`` gathers for ``fit``.
A ``RunConfig`` holds the rest: length, clipping, logging, saving. A run directory
receives

    checkpoint.npz   model, optimizer and where the run stands (``fastlstm.load`` reads it)
    log.csv          one row every ``log_every`` steps and at each validation
    loss.png         training and validation loss, when matplotlib is installed

    run.lock         who holds the directory (an OS lock, released when the process ends)

Ctrl-C (SIGINT), SIGTERM (``kill``, ``timeout``, ``docker stop``, a batch scheduler's time
limit) and SIGHUP (a closed terminal or ssh session) finish the current step, write a
complete checkpoint and stop; ``fastlstm train`` then exits with 128 + the signal's
number. A second signal stops at once (the previous checkpoint stays intact: saves are
atomic). A step whose loss or gradient is not finite is not applied: the run writes the
checkpoint of the step before and raises ``TrainingDiverged``.
"""
import csv
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import checkpoint
from ._threads import blas_threads
from .data import bucketed_batches, lm_batches
from .nn.functional import binary_cross_entropy_with_logits, cross_entropy
from .nn.utils import clip_grad_norm_

__all__ = ["fit", "RunConfig", "Task", "RunDirectory", "RunDirectoryInUse",
           "TrainingDiverged", "STOP_SIGNALS", "lm_steps_per_epoch", "lm_epoch_batches",
           "lm_grad_step", "lm_evaluate", "unigram_loss", "classifier_epoch_batches",
           "classifier_grad_step", "classifier_evaluate"]

LOG_FIELDS = ("step", "epoch", "tokens", "train_loss", "valid_loss", "valid_perplexity",
              "valid_accuracy", "lr", "seconds", "tokens_per_s")


class RunDirectoryInUse(OSError):
    """Another live process holds the run directory's lock."""


class TrainingDiverged(FloatingPointError):
    """The loss or the gradient became NaN or infinite; ``step`` is the last good step,
    the one the run's checkpoint holds."""

    def __init__(self, message, step):
        super().__init__(message)
        self.step = step


# Stale temporaries of atomic writes killed before their rename: <name>.tmp-<pid>[.png]
_TEMPORARY = re.compile(r"^(checkpoint\.npz|log\.csv|loss\.png)\.tmp-(\d+)(\.png)?$")


class RunDirectory:
    """The files of one training run (see the module docstring).

    ``acquire(resume, overwrite)`` takes the directory for this process: an OS lock on
    ``run.lock`` (gone with the process, however it ends), then the checks that keep one
    run's files from mixing with another's."""

    RUN_FILES = ("checkpoint.npz", "log.csv", "loss.png")

    def __init__(self, path):
        self.path = os.fspath(path)
        self.checkpoint = os.path.join(self.path, "checkpoint.npz")
        self.log = os.path.join(self.path, "log.csv")
        self.plot = os.path.join(self.path, "loss.png")
        self.lock_path = os.path.join(self.path, "run.lock")
        self._lock_file = None
        self._replaced = []

    def acquire(self, resume, overwrite=False):
        """Lock the directory and check it suits the run; returns notes to print.

        A fresh run needs a directory without another run's files (``overwrite``
        deletes them); ``resume`` needs a checkpoint. Temporaries left by killed saves
        are deleted (the lock guarantees no live run is writing them)."""
        if resume and overwrite:
            raise ValueError("--resume continues the run in --out, --overwrite replaces it: "
                             "pass one of them")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise NotADirectoryError(f"--out {self.path} is a file, not a directory")
        if resume and not os.path.isfile(self.checkpoint):
            raise FileNotFoundError(f"--resume: {self.checkpoint} does not exist")
        os.makedirs(self.path, exist_ok=True)
        self._lock()
        notes = []
        try:
            present = [f for f in self.RUN_FILES if os.path.exists(os.path.join(self.path, f))]
            if resume:
                if not os.path.isfile(self.checkpoint):
                    raise FileNotFoundError(f"--resume: {self.checkpoint} does not exist")
            elif present and not overwrite:
                raise FileExistsError(
                    f"{self.path} already holds a run ({', '.join(present)}); pass --resume "
                    f"to continue it, --overwrite to replace it, or choose another --out")
            elif present:
                self._replaced = present     # deleted by replace_earlier_run, not yet
            removed, size = 0, 0
            for name in os.listdir(self.path):
                if _TEMPORARY.match(name):
                    full = os.path.join(self.path, name)
                    size += os.path.getsize(full)
                    os.remove(full)
                    removed += 1
            if removed:
                notes.append(f"deleted {removed} temporary file{'s' * (removed > 1)} "
                             f"({size / 1e6:.1f} MB) left by an interrupted save")
        except BaseException:
            self.release()
            raise
        return notes

    def _lock(self):
        f = open(self.lock_path, "a+")
        try:
            _try_lock(f)
        except OSError:
            try:
                f.seek(0)
                holder = f.read().strip() or "another process"
            except OSError:         # Windows: the holder's locked byte cannot be read
                holder = "another process"
            f.close()
            raise RunDirectoryInUse(f"{self.path} is in use by a live run ({holder}); "
                                    f"wait for it to end or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n")
        f.flush()
        self._lock_file = f

    def replace_earlier_run(self):
        """With ``overwrite``: delete the earlier run's files, once the new run's options,
        data and model are ready (a new run that fails to start leaves them be).
        Returns a note to print, or None."""
        replaced, self._replaced = self._replaced, []
        for f in replaced:
            if os.path.exists(os.path.join(self.path, f)):
                os.remove(os.path.join(self.path, f))
        if replaced:
            return f"--overwrite: deleted the earlier run's {', '.join(replaced)}"
        return None

    def release(self):
        """Give the directory up (the process's end does the same)."""
        if self._lock_file is not None:
            self._lock_file.close()      # closing the descriptor drops the lock
            self._lock_file = None

    def read_log(self):
        """The rows of log.csv (numbers as floats, blanks as None)."""
        if not os.path.isfile(self.log):
            return []
        with open(self.log, newline="") as f:
            return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                    for row in csv.DictReader(f)]

    def trim_log(self, step):
        """Keep log.csv's rows up to ``step`` (the checkpoint's): rows a killed run logged
        after its last checkpoint, or a half-written last line, would otherwise repeat
        or garble the resumed run's. Returns how many rows were dropped."""
        if not os.path.isfile(self.log):
            return 0
        with open(self.log, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = list(reader)
        if header != list(LOG_FIELDS):
            raise ValueError(f"{self.log} has the columns {header}, not those of a fastlstm "
                             f"log; move it away to resume")
        kept = []
        for row in rows:
            try:
                if len(row) == len(LOG_FIELDS) and float(row[0]) <= step:
                    kept.append(row)
            except ValueError:
                pass
        dropped = len(rows) - len(kept)
        if dropped:
            tmp = f"{self.log}.tmp-{os.getpid()}"
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(LOG_FIELDS)
                writer.writerows(kept)
            os.replace(tmp, self.log)
        return dropped

    def append_log(self, row):
        new = not os.path.isfile(self.log)
        with open(self.log, "a", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in LOG_FIELDS})

    def write_plot(self, title, baseline=None):
        """loss.png from log.csv; False when matplotlib is not installed."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        rows = self.read_log()
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        train = [(r["step"], r["train_loss"]) for r in rows if r["train_loss"] is not None]
        valid = [(r["step"], r["valid_loss"]) for r in rows if r["valid_loss"] is not None]
        if train:
            ax.plot(*zip(*train), lw=1, alpha=0.8, label="training loss")
        if valid:
            ax.plot(*zip(*valid), "o-", lw=1.5, label="validation loss")
        if baseline is not None:
            ax.axhline(baseline, color="grey", ls="--", lw=1, label="unigram baseline")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats per token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        tmp = f"{self.plot}.tmp-{os.getpid()}.png"
        fig.savefig(tmp)
        plt.close(fig)
        os.replace(tmp, self.plot)
        return True


def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _try_lock(f):
    """Take an exclusive lock on the open file ``f`` without waiting; OSError if taken."""
    if os.name == "nt":
        import msvcrt
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


# The signals that end a run with a checkpoint (SIGHUP does not exist on Windows).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


class _StopGuard:
    """Turn the first SIGINT, SIGTERM or SIGHUP into a request to stop after the current
    step (``signum`` records which); a second one ends the process at once, as the
    signal itself would."""

    def __init__(self, write):
        self.signum = None
        self._write = write
        self._previous = {}

    @property
    def requested(self):
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.requested:
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)     # the default action: end with this signal
            return
        self.signum = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        again = "press again" if signum == signal.SIGINT else "send it again"
        self._write(f"{name}: stopping after this step and writing a checkpoint "
                    f"({again} to stop at once)")

    def _restore(self):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                # A signal the user ignores (nohup, a background job's SIGINT) stays so.
                if signal.getsignal(signum) is signal.SIG_IGN:
                    continue
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        self._restore()


@dataclass
class RunConfig:
    """How a run goes: its length, clipping, logging, saving, sampling and display.

    ``steps`` counts every step of the run, ``start_step`` those done before a resume
    (``tokens_seen`` and ``seconds_before`` likewise); ``clip`` bounds the gradients'
    global norm (0: no clipping); a log row every ``log_every`` steps, a checkpoint every
    ``save_every`` (0: at the end only), a sample every ``sample_every`` (0: never).
    ``progress`` draws a bar when stderr is a terminal; ``title`` and ``baseline`` (a
    loss drawn as a line) go to loss.png. ``numpy_threads``: BLAS threads for NumPy
    products in the step that are not fastlstm's own (fastlstm's layers, loss and
    optimizers run on their own threads); one keeps idle BLAS threads from spinning on
    the cores the kernels' OpenMP threads need.
    """
    steps: int
    steps_per_epoch: int
    clip: float = 5.0
    log_every: int = 50
    save_every: int = 500
    sample_every: int = 0
    progress: bool = True
    title: str = ""
    baseline: Optional[float] = None
    numpy_threads: int = 1
    start_step: int = 0
    tokens_seen: int = 0
    seconds_before: float = 0.0

    def __post_init__(self):
        self.check()

    def check(self):
        """ValueError naming the first setting out of range."""
        for name, low in (("steps", 1), ("steps_per_epoch", 1), ("start_step", 0),
                          ("log_every", 1), ("save_every", 0), ("sample_every", 0)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                    or value < low):
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        clip = self.clip
        if not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip >= 0):
            raise ValueError(f"clip must be a finite number >= 0, got {clip!r}")


@dataclass
class Task:
    """What ``fit`` calls: the functions that make one model's training.

    epoch_batches(epoch, skip) yields this process's batches of one epoch, the first
    ``skip`` left out (resuming mid-epoch); grad_step(batch) -> (loss, tokens, weight)
    zeroes the gradients and accumulates this batch's, ``weight`` being this process's
    share of the global batch; evaluate() -> dict with "valid_loss" and
    "valid_perplexity" or "valid_accuracy"; metadata(step, epoch, extra) -> the
    checkpoint's metadata; sample() -> text to show (None: nothing to show).
    """
    epoch_batches: Callable
    grad_step: Callable
    evaluate: Callable
    metadata: Callable
    sample: Optional[Callable] = None


def fit(model, optimizer, task, config, *, run, scheduler=None, dist=None, out=None):
    """Train ``model`` with ``task``'s functions (a ``Task``) until ``config.steps``
    steps (a ``RunConfig``) have run in total; ``run`` is the ``RunDirectory`` written.

    After each ``task.grad_step``, ``fit`` averages the gradients over the processes
    (``dist``, a ``fastlstm.distributed.Context``, when there are several), clips their
    global norm to ``config.clip`` and steps the optimizer. Only rank 0 logs, samples
    and saves (its messages to ``out``, default stdout); ``scheduler.step`` receives
    each validation loss.

    Validates at every epoch end and at the end; returns ``{"step", "interrupted",
    "signal", "last_eval", "tokens"}``, ``signal`` being the one that stopped the run
    (SIGINT, SIGTERM or SIGHUP; None when it ran to the end). Raises ``TrainingDiverged``
    (after saving the last good step) when a loss or gradient is not finite.
    """
    config.check()
    from tqdm.auto import tqdm
    from .distributed import Context
    dist = dist or Context()
    root = dist.is_root
    out = out or sys.stdout
    params = model.parameters()
    # A progress bar in a terminal; in a log file or a pipe, a line every log_every steps.
    progress = config.progress and root and sys.stderr.isatty()
    bar = tqdm(total=config.steps, initial=config.start_step, unit="step",
               disable=not progress, file=sys.stderr, smoothing=0.1,
               bar_format="{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps "
                          "[{elapsed}<{remaining}]")

    def say(text):
        if not root:
            return
        if progress:
            bar.write(text, file=out)
        else:
            print(text, file=out, flush=True)

    step, tokens = config.start_step, config.tokens_seen
    last_eval, last_eval_step = None, None
    window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
    run_start = time.perf_counter()

    def seconds():
        return config.seconds_before + time.perf_counter() - run_start

    def validate():
        nonlocal last_eval, last_eval_step
        model.eval()
        try:
            last_eval = task.evaluate()
        finally:
            model.train()
        last_eval_step = step
        if scheduler is not None:
            scheduler.step(last_eval["valid_loss"])
        if not root:
            return
        run.append_log(dict(step=step, epoch=step / config.steps_per_epoch,
                            tokens=tokens, lr=optimizer.lr, seconds=seconds(), **last_eval))
        shown = ", ".join(f"{k[6:]} {v:.4g}" for k, v in last_eval.items())
        say(f"step {step}  epoch {step / config.steps_per_epoch:.2f}  validation: {shown}"
            + (f"  (unigram baseline loss {config.baseline:.4g})"
               if config.baseline is not None else ""))
        run.write_plot(config.title, config.baseline)

    last_saved = config.start_step or None   # a resumed run's checkpoint is on disk

    def save():
        nonlocal last_saved
        if not all(np.isfinite(p.data).all() for p in params):
            # An update overflowed (a finite gradient times a huge learning rate): no
            # good state is left in memory, only the last checkpoint on disk. Every rank
            # holds the same weights, so every rank stops here.
            raise TrainingDiverged(
                f"the update of step {step} made the weights non-finite; the last good "
                f"state is the last checkpoint written ("
                + (f"step {last_saved}, in {run.checkpoint}" if last_saved is not None
                   else "none has been written yet") + "). Usual causes: a learning rate "
                "too high (--lr, which may change on --resume) or no gradient clipping "
                "(--clip).", last_saved)
        if not root:
            return
        extra = {"tokens": tokens, "seconds": seconds(), "last_eval": last_eval}
        if scheduler is not None:
            extra["scheduler"] = {"best": scheduler.best, "bad_epochs": scheduler.bad_epochs}
        checkpoint.save(run.checkpoint, model, optimizer,
                        **task.metadata(step, step // config.steps_per_epoch, extra))
        last_saved = step

    def diverged(loss, norm):
        what = (f"the training loss became {loss}" if not math.isfinite(loss) else
                f"the gradient's norm became {norm} (loss {loss:.4g})")
        causes = ("Usual causes: a learning rate too high (--lr, which may change on "
                  "--resume) or no gradient clipping (--clip).")
        # The weights and optimizer state are still those of `step` (unless the update
        # of `step` itself overflowed them: save() then says so).
        save()
        if dist.size > 1:
            dist.sum([0.0])    # no rank ends the job before rank 0's save is complete
        raise TrainingDiverged(
            f"{what} at step {step + 1}; that step was not applied. The checkpoint of "
            f"step {step}, the last with finite numbers, is in {run.checkpoint}. " + causes,
            step)

    if root:
        os.makedirs(run.path, exist_ok=True)
    guard = _StopGuard(say)
    # Every rank must leave the loop after the same step: a Ctrl-C seen by any of them
    # travels with the gradients, and only the agreed flag ends the loop.
    stop = False
    model.train()
    try:
        with guard, blas_threads(config.numpy_threads):
            while step < config.steps and not stop:
                epoch, skip = divmod(step, config.steps_per_epoch)
                for batch in task.epoch_batches(epoch, skip):
                    t0 = time.perf_counter()
                    loss, n_tokens, weight = task.grad_step(batch)
                    if dist.size > 1:
                        loss, stop, n_tokens = dist.average_gradients(
                            params, weight, loss, guard.requested, n_tokens)
                    else:
                        stop = guard.requested
                    # The global gradient norm, clipped to config.clip (0: measured only);
                    # a non-finite loss or norm must not reach the weights.
                    norm = clip_grad_norm_(params, config.clip if config.clip else math.inf)
                    if not (math.isfinite(loss) and math.isfinite(norm)):
                        diverged(loss, norm)
                    optimizer.step()
                    window_time += time.perf_counter() - t0
                    step += 1
                    tokens += n_tokens
                    window_loss += loss
                    window_steps += 1
                    window_tokens += n_tokens
                    bar.update(1)
                    if root and (step % config.log_every == 0 or step == config.steps):
                        # tokens/s of the training steps alone (not validation or saving)
                        rate = window_tokens / max(window_time, 1e-9)
                        row = dict(step=step, epoch=step / config.steps_per_epoch,
                                   tokens=tokens, train_loss=window_loss / window_steps,
                                   lr=optimizer.lr, seconds=seconds(), tokens_per_s=rate)
                        run.append_log(row)
                        bar.set_description_str(f"loss {row['train_loss']:.3f}, "
                                                f"{rate:,.0f} tokens/s ", refresh=False)
                        if not progress:
                            say(f"step {step}/{config.steps}  "
                                f"loss {row['train_loss']:.4f}  {rate:,.0f} tokens/s")
                        window_loss, window_steps, window_tokens = 0.0, 0, 0
                        window_time = 0.0
                    if root and task.sample is not None and config.sample_every and (
                            step % config.sample_every == 0):
                        say(f"--- sample at step {step} ---\n{task.sample()}\n---")
                    if (config.save_every and step % config.save_every == 0
                            and step < config.steps):
                        save()
                    if step >= config.steps or stop:
                        break
                if (step % config.steps_per_epoch == 0 and step > config.start_step
                        and not stop):
                    validate()
            if stop and step >= config.steps:
                stop = False      # the signal came during the last step: the run is done
            if not stop and last_eval_step != step:
                validate()
            save()
    finally:
        bar.close()
    stop_signal = None
    if stop:
        # Every rank reports the same signal, though only some of them received one.
        received = dist.sum([float(guard.signum == s) for s in STOP_SIGNALS])
        stop_signal = next((s for s, n in zip(STOP_SIGNALS, received) if n > 0), None)
    if root:
        run.write_plot(config.title, config.baseline)
    return {"step": step, "interrupted": stop, "signal": stop_signal, "last_eval": last_eval,
            "tokens": tokens}


# --- language models -------------------------------------------------------------------

def lm_steps_per_epoch(n_tokens, seq_len, batch_size):
    """Training steps in one pass over a stream of ``n_tokens`` ids, read as
    ``batch_size`` parallel streams (the global batch, over all processes)."""
    stream_len = (n_tokens - 1) // batch_size
    if stream_len < 1:
        raise ValueError(f"the training text has {n_tokens} tokens: too few for "
                         f"{batch_size} streams (lower --batch)")
    return -(-stream_len // seq_len)


def lm_epoch_batches(ids, seq_len, batch_size, dist=None):
    """epoch_batches for ``fit``: (x, y, first) with ``first`` marking a chunk that
    starts a pass (or a resumed one), where the carried state restarts from zeros.

    With ``dist``, the text is read as ``batch_size * dist.size`` streams, as one process
    with the whole global batch would, and this rank takes its ``batch_size`` of them.
    """
    size = dist.size if dist is not None else 1
    columns = slice(None) if size == 1 else dist.shard(batch_size * size)

    def epoch_batches(epoch, skip):
        for k, (x, y) in enumerate(lm_batches(ids, seq_len, batch_size * size)):
            if k >= skip:
                yield x[:, columns], y[:, columns], k == skip
    return epoch_batches


def lm_grad_step(model, n_ranks=1):
    """grad_step for ``fit``: truncated BPTT, the state carried from chunk to chunk."""
    state = [None]

    def grad_step(batch):
        x, y, first = batch
        if first:
            state[0] = None
        logits, new_state = model(x, state[0])
        loss, dlogits = cross_entropy(logits, y, num_threads=model.num_threads)
        model.zero_grad()
        model.backward(dlogits)
        state[0] = new_state
        return loss, x.size, 1.0 / n_ranks     # every rank holds as many streams
    return grad_step


def lm_evaluate(model, ids, seq_len, batch_size, dist=None):
    """Mean cross-entropy (nats per token) of ``model`` on the stream ``ids``, the state
    carried across chunks; with its perplexity. Fewer streams when the text is short.
    With ``dist``, the ranks share the ``batch_size * dist.size`` streams."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < 2:
        raise ValueError("the evaluation text needs at least two tokens")
    size = dist.size if dist is not None else 1
    B = max(1, min(batch_size * size, (len(ids) - 1) // max(seq_len, 1)))
    columns = slice(None) if size == 1 else dist.shard(B)
    total, count, state = 0.0, 0, None
    for x, y in lm_batches(ids, seq_len, B):
        x, y = x[:, columns], y[:, columns]
        if x.shape[1] == 0:
            continue
        logits, state = model(x, state)
        loss, _ = cross_entropy(logits, y, num_threads=model.num_threads)
        total += loss * y.size
        count += y.size
    if size > 1:
        total, count = dist.sum([total, count])
    loss = total / count
    return {"valid_loss": loss, "valid_perplexity": math.exp(min(loss, 700))}


def unigram_loss(train_ids, valid_ids, vocab_size):
    """Cross-entropy of ``valid_ids`` under the training ids' unigram frequencies (add-one
    smoothed): the loss a model without context would reach."""
    counts = np.bincount(np.asarray(train_ids), minlength=vocab_size) + 1.0
    log_p = np.log(counts / counts.sum())
    return float(-log_p[np.asarray(valid_ids)].mean())


# --- classification --------------------------------------------------------------------

def classifier_epoch_batches(sequences, labels, batch_size, seed, pad_id=0, dist=None):
    """epoch_batches for ``fit``: length-bucketed (ids, lengths, labels, n_global),
    shuffled with a seed of its own per epoch so a resumed run sees the same order.
    With ``dist``, the global batches hold ``batch_size * dist.size`` reviews and this
    rank takes its columns of each."""
    labels = np.asarray(labels)
    size = dist.size if dist is not None else 1

    def epoch_batches(epoch, skip):
        batches = bucketed_batches(sequences, batch_size * size, pad_id=pad_id,
                                   shuffle=True, seed=None if seed is None else seed + epoch)
        for k, (ids, lengths, index) in enumerate(batches):
            if k >= skip:
                columns = slice(None) if size == 1 else dist.shard(len(index))
                yield (ids[:, columns], lengths[columns], labels[index[columns]],
                       len(index))
    return epoch_batches


def classifier_grad_step(model):
    """grad_step for ``fit``: one padded batch of reviews, its gradients weighted by this
    rank's share of the global batch."""
    def grad_step(batch):
        ids, lengths, y, n_global = batch
        model.zero_grad()
        if len(lengths) == 0:          # a short last batch can leave a rank nothing
            return 0.0, 0, 0.0
        ids = ids[:max(int(lengths.max()), 1)]
        logits = model(ids, lengths=lengths)
        loss, dlogits = binary_cross_entropy_with_logits(logits, y.astype(logits.dtype))
        model.backward(dlogits)
        return loss, int(np.sum(lengths)), len(lengths) / n_global
    return grad_step


def classifier_evaluate(model, sequences, labels, batch_size=64, pad_id=0, dist=None):
    """Mean binary cross-entropy and accuracy of ``model`` on (sequences, labels); with
    ``dist``, each rank evaluates every size-th review and the sums are combined."""
    labels = np.asarray(labels)
    n = len(sequences)
    if n == 0:
        raise ValueError("no examples to evaluate")
    mine = np.arange(n)
    if dist is not None and dist.size > 1:
        mine = mine[dist.rank::dist.size]
    total, correct = 0.0, 0
    if len(mine):
        for ids, lengths, index in bucketed_batches([sequences[i] for i in mine],
                                                    batch_size, pad_id=pad_id, shuffle=False):
            logits = model(ids, lengths=lengths)
            y = labels[mine[index]]
            loss, _ = binary_cross_entropy_with_logits(logits, y.astype(logits.dtype))
            total += loss * len(index)
            correct += int(np.sum((logits > 0) == (y == 1)))
    if dist is not None and dist.size > 1:
        total, correct = dist.sum([total, correct])
    return {"valid_loss": total / n, "valid_accuracy": correct / n}
