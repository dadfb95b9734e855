"""The training loop behind ``fastlstm train``: steps, validation, checkpoints, logs.

``fit`` runs any model whose one training step is a function of a batch; the language
models and the sentiment classifier differ only in their batches, their step and their
evaluation (``lm_*`` and ``classifier_*`` below). A run directory receives

    checkpoint.npz   model, optimizer and where the run stands (``fastlstm.load`` reads it)
    log.csv          one row every ``log_every`` steps and at each validation
    loss.png         training and validation loss, when matplotlib is installed

Ctrl-C (SIGINT) finishes the current step, writes a complete checkpoint and stops; a
second Ctrl-C stops at once (the previous checkpoint stays intact: saves are atomic).
"""
import csv
import math
import os
import signal
import sys
import threading
import time

import numpy as np

from . import checkpoint
from ._threads import blas_threads
from .data import bucketed_batches, lm_batches
from .nn.functional import binary_cross_entropy_with_logits, cross_entropy
from .nn.utils import clip_grad_norm_

__all__ = ["fit", "RunDirectory", "lm_steps_per_epoch", "lm_epoch_batches", "lm_grad_step",
           "lm_evaluate", "unigram_loss", "classifier_epoch_batches",
           "classifier_grad_step", "classifier_evaluate"]

LOG_FIELDS = ("step", "epoch", "tokens", "train_loss", "valid_loss", "valid_perplexity",
              "valid_accuracy", "lr", "seconds", "tokens_per_s")


class RunDirectory:
    """The files of one training run (see the module docstring)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.checkpoint = os.path.join(self.path, "checkpoint.npz")
        self.log = os.path.join(self.path, "log.csv")
        self.plot = os.path.join(self.path, "loss.png")

    def check(self, resume):
        """Refuse to overwrite an earlier run, or to resume one that is not there."""
        if resume:
            if not os.path.isfile(self.checkpoint):
                raise FileNotFoundError(f"--resume: {self.checkpoint} does not exist")
        elif os.path.exists(self.checkpoint):
            raise FileExistsError(f"{self.path} already holds a run (checkpoint.npz); pass "
                                  f"--resume to continue it or choose another --out")

    def read_log(self):
        """The rows of log.csv (numbers as floats, blanks as None)."""
        if not os.path.isfile(self.log):
            return []
        with open(self.log, newline="") as f:
            return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                    for row in csv.DictReader(f)]

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


class _SigintGuard:
    """Turn the first Ctrl-C into a request to stop after the current step."""

    def __init__(self, write):
        self.requested = False
        self._write = write
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._write("Ctrl-C: stopping after this step and writing a checkpoint "
                    "(press again to stop at once)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def fit(model, optimizer, *, run, steps, steps_per_epoch, epoch_batches, grad_step,
        evaluate, metadata, clip=5.0, start_step=0, tokens_seen=0, seconds_before=0.0,
        log_every=50, save_every=500, sample_every=0, sample=None, scheduler=None,
        progress=True, title="", baseline=None, out=None, numpy_threads=1, dist=None):
    """Train ``model`` until ``steps`` steps have run in total (counting ``start_step``
    steps done before a resume; ``tokens_seen`` and ``seconds_before`` likewise).

    epoch_batches(epoch, skip) yields this process's batches of one epoch, the first
    ``skip`` left out (resuming mid-epoch); grad_step(batch) -> (loss, tokens, weight)
    zeroes the gradients and accumulates this batch's, ``weight`` being this process's
    share of the global batch; then ``fit`` averages the gradients over the processes
    (``dist``, a ``fastlstm.distributed.Context``, when there are several), clips their
    global norm to ``clip`` (0: no clipping) and steps the optimizer. evaluate() -> dict
    with "valid_loss" and "valid_perplexity" or "valid_accuracy"; metadata(step, epoch,
    extra) -> the checkpoint's metadata. Only rank 0 logs, samples and saves.

    ``numpy_threads``: BLAS threads for NumPy products in the step that are not fastlstm's
    own (fastlstm's layers, loss and optimizers run on their own threads). One keeps idle
    BLAS threads from spinning on the cores the kernels' OpenMP threads need. Validates at every epoch end and at the end; returns
    ``{"step", "interrupted", "last_eval", "tokens"}``.
    """
    from tqdm.auto import tqdm
    from .distributed import Context
    dist = dist or Context()
    root = dist.is_root
    out = out or sys.stdout
    params = model.parameters()
    # A progress bar in a terminal; in a log file or a pipe, a line every log_every steps.
    progress = progress and root and sys.stderr.isatty()
    bar = tqdm(total=steps, initial=start_step, unit="step",
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

    step, tokens = start_step, tokens_seen
    last_eval, last_eval_step = None, None
    window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
    run_start = time.perf_counter()

    def seconds():
        return seconds_before + time.perf_counter() - run_start

    def validate():
        nonlocal last_eval, last_eval_step
        model.eval()
        try:
            last_eval = evaluate()
        finally:
            model.train()
        last_eval_step = step
        if scheduler is not None:
            scheduler.step(last_eval["valid_loss"])
        if not root:
            return
        run.append_log(dict(step=step, epoch=step / steps_per_epoch, tokens=tokens,
                            lr=optimizer.lr, seconds=seconds(), **last_eval))
        shown = ", ".join(f"{k[6:]} {v:.4g}" for k, v in last_eval.items())
        say(f"step {step}  epoch {step / steps_per_epoch:.2f}  validation: {shown}"
            + (f"  (unigram baseline loss {baseline:.4g})" if baseline is not None else ""))
        run.write_plot(title, baseline)

    def save():
        if not root:
            return
        extra = {"tokens": tokens, "seconds": seconds(), "last_eval": last_eval}
        if scheduler is not None:
            extra["scheduler"] = {"best": scheduler.best, "bad_epochs": scheduler.bad_epochs}
        checkpoint.save(run.checkpoint, model, optimizer,
                        **metadata(step, step // steps_per_epoch, extra))

    if root:
        os.makedirs(run.path, exist_ok=True)
    guard = _SigintGuard(say)
    # Every rank must leave the loop after the same step: a Ctrl-C seen by any of them
    # travels with the gradients, and only the agreed flag ends the loop.
    stop = False
    model.train()
    try:
        with guard, blas_threads(numpy_threads):
            while step < steps and not stop:
                epoch, skip = divmod(step, steps_per_epoch)
                for batch in epoch_batches(epoch, skip):
                    t0 = time.perf_counter()
                    loss, n_tokens, weight = grad_step(batch)
                    if dist.size > 1:
                        loss, stop, n_tokens = dist.average_gradients(
                            params, weight, loss, guard.requested, n_tokens)
                    else:
                        stop = guard.requested
                    if not math.isfinite(loss):
                        raise FloatingPointError(
                            f"the training loss became {loss} at step {step + 1}; lower the "
                            f"learning rate or the clipping threshold")
                    if clip:
                        clip_grad_norm_(params, clip)
                    optimizer.step()
                    window_time += time.perf_counter() - t0
                    step += 1
                    tokens += n_tokens
                    window_loss += loss
                    window_steps += 1
                    window_tokens += n_tokens
                    bar.update(1)
                    if root and (step % log_every == 0 or step == steps):
                        # tokens/s of the training steps alone (not validation or saving)
                        rate = window_tokens / max(window_time, 1e-9)
                        row = dict(step=step, epoch=step / steps_per_epoch, tokens=tokens,
                                   train_loss=window_loss / window_steps, lr=optimizer.lr,
                                   seconds=seconds(), tokens_per_s=rate)
                        run.append_log(row)
                        bar.set_description_str(f"loss {row['train_loss']:.3f}, "
                                                f"{rate:,.0f} tokens/s ", refresh=False)
                        if not progress:
                            say(f"step {step}/{steps}  loss {row['train_loss']:.4f}  "
                                f"{rate:,.0f} tokens/s")
                        window_loss, window_steps, window_tokens = 0.0, 0, 0
                        window_time = 0.0
                    if root and sample is not None and sample_every and (
                            step % sample_every == 0):
                        say(f"--- sample at step {step} ---\n{sample()}\n---")
                    if save_every and step % save_every == 0 and step < steps:
                        save()
                    if step >= steps or stop:
                        break
                if step % steps_per_epoch == 0 and step > start_step and not stop:
                    validate()
            if not stop and last_eval_step != step:
                validate()
            save()
    finally:
        bar.close()
    if root:
        run.write_plot(title, baseline)
    return {"step": step, "interrupted": stop, "last_eval": last_eval, "tokens": tokens}


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
