"""The ``fastlstm`` command (also ``python -m fastlstm``).

    fastlstm train char      [--text FILE] [--cell lstm|gru|rnn] [--out DIR] [--resume] ...
    fastlstm train word      [--text FILE] [--cell lstm|gru|rnn] [--bptt-truncate K] ...
    fastlstm train sentiment --data PATH [--cell lstm|gru] [--bidirectional] ...
    fastlstm sample DIR_OR_CHECKPOINT [--prefix TEXT] [--length N] [--temperature T]
    fastlstm eval   DIR_OR_CHECKPOINT [--text FILE | --data PATH]
    fastlstm demo | config | --version

``fastlstm <command> --help`` lists every option with its default. Without ``--text``
the language models train on the built-in corpus (``fastlstm.corpus``: docstrings of
Python's own standard library, read at run time).
"""
import argparse
import os
import signal
import sys
import time

import numpy as np

from . import __version__
from ._argtypes import integer, number

# Options that may change when a run is resumed; every other one comes from the checkpoint.
# The training data (--text, --data) may move: a resumed run checks its content instead.
RESUMABLE = {"steps", "epochs", "threads", "out", "resume", "save_every", "log_every",
             "sample_every", "sample_length", "temperature", "progress", "lr", "eval_batch",
             "text", "data", "allow_changed_data", "overwrite"}
DATA_OPTIONS = ("text", "data")

LM_DEFAULTS = dict(char=dict(hidden=256, layers=1, embedding=0, seq=64, batch=32,
                             steps=2500, lr=3e-3, sample_length=200, sample_every=250),
                   word=dict(hidden=256, layers=1, embedding=64, seq=32, batch=32,
                             steps=1000, lr=3e-3, sample_length=40, sample_every=250))


class _Options:
    """argparse with defaults kept aside, so a resumed run can tell what was typed."""

    def __init__(self, parser):
        self.parser = parser
        self.defaults = {}

    def add(self, *flags, default=None, help="", **kw):
        action = self.parser.add_argument(*flags, default=None, help=(
            f"{help} (default: {default})" if default not in (None, False) else help), **kw)
        self.defaults[action.dest] = default
        return action


def _common_train_options(opt, task):
    d = LM_DEFAULTS.get(task, {})
    opt.add("--steps", type=integer(1), default=d.get("steps"), help="training steps in total")
    opt.add("--batch", type=integer(1), default=d.get("batch", 32), help="batch size B")
    opt.add("--hidden", type=integer(1), default=d.get("hidden", 64),
            help="hidden size H of the recurrent cell")
    opt.add("--layers", type=integer(1), default=d.get("layers", 1), help="stacked layers")
    opt.add("--dropout", type=number(0, 1), default=0.0, help="dropout between layers")
    opt.add("--optimizer", choices=("adam", "adagrad", "sgd"), default="adam",
            help="optimizer")
    opt.add("--lr", type=number(0, None, low_open=True), default=d.get("lr", 1e-3),
            help="learning rate")
    opt.add("--clip", type=number(0), default=5.0,
            help="clip the gradients' global norm to this (0: no clipping)")
    opt.add("--valid-fraction", type=number(0, 1),
            default=0.05 if task != "sentiment" else 0.1,
            help="share of the data held out for validation")
    opt.add("--seed", type=integer(0), default=0,
            help="seed of the weights, data order, samples")
    opt.add("--threads", type=integer(1), default=None,
            help="threads for the kernels (default: every usable core)")
    opt.add("--out", metavar="DIR", default=None,
            help="run directory: checkpoint.npz, log.csv, loss.png "
                 "(default: runs/<task>-<date>-<time>)")
    opt.add("--resume", action="store_true", default=False,
            help="continue the run in --out (model, data and settings from its checkpoint)")
    opt.add("--overwrite", action="store_true", default=False,
            help="replace the run already in --out (its checkpoint, log and plot)")
    opt.add("--allow-changed-data", action="store_true", default=False,
            help="with --resume: go on although the training data's content changed")
    opt.add("--save-every", type=integer(1), default=500, help="checkpoint every N steps")
    opt.add("--log-every", type=integer(1), default=50, help="a log.csv row every N steps")
    opt.add("--no-progress", dest="progress", action="store_false", default=True,
            help="print a line every --log-every steps instead of a progress bar")


def _version_line():
    """``fastlstm 0.1.0 (compiled kernels, OpenMP)``: the version and, since a wheel for
    the wrong platform or a broken build falls back to NumPy, what actually runs."""
    from . import _backend
    if not _backend.compiled_available():
        return f"fastlstm {__version__} (NumPy reference only: {_backend.IMPORT_ERROR})"
    openmp = "OpenMP" if _backend.runtime.OPENMP_ENABLED else "no OpenMP, 1 thread"
    return f"fastlstm {__version__} (compiled kernels, {openmp})"


class _Refused(argparse.Action):
    """An option a task cannot take, refused as it is parsed (exit status 2) with the
    reason, rather than argparse's bare "unrecognized arguments". Hidden from --help."""

    def __init__(self, option_strings, dest, reason, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        self.reason = reason

    def __call__(self, parser, namespace, values, option_string=None):
        raise argparse.ArgumentError(self, self.reason)


_NO_BIDIRECTIONAL_LM = ("a language model predicts each token from the ones before it; a "
                        "reverse direction would read the very tokens it must predict "
                        "(only 'fastlstm train sentiment' takes --bidirectional)")


class _VersionAction(argparse.Action):
    # argparse's own "version" action re-wraps the text to the terminal width
    def __call__(self, parser, namespace, values, option_string=None):
        print(_version_line())
        parser.exit()


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastlstm", description="Fast LSTMs and RNNs on the CPU from NumPy.",
        epilog="Run 'fastlstm COMMAND --help' for a command's options.")
    parser.add_argument("--version", action=_VersionAction, nargs=0,
                        help="print the version and whether the kernels are compiled")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    options = {}

    train = commands.add_parser("train", help="train a model (char, word or sentiment)",
                                description="Train a model; see 'fastlstm train TASK --help'.")
    tasks = train.add_subparsers(dest="task", metavar="TASK")
    tasks.required = True

    p = tasks.add_parser("char", help="character-level LSTM, GRU or vanilla-RNN language model",
                         description="Train a character-level language model (CharLM: "
                                     "an LSTM, GRU or vanilla RNN) with truncated BPTT.")
    opt = options["char"] = _Options(p)
    opt.add("--text", metavar="FILE", help="UTF-8 text to learn "
            "(default: the built-in corpus of standard-library docstrings)")
    _common_train_options(opt, "char")
    opt.add("--cell", choices=("lstm", "gru", "rnn"), default="lstm",
            help="recurrent cell (rnn: vanilla, tanh)")
    p.add_argument("--bidirectional", action=_Refused, reason=_NO_BIDIRECTIONAL_LM)
    opt.add("--embedding", type=integer(0), default=0,
            help="character embedding size (0: one-hot characters)")
    _lm_options(opt, "char")

    p = tasks.add_parser("word", help="word-level LSTM, GRU or vanilla-RNN language model",
                         description="Train a word-level language model (WordLM: an "
                                     "LSTM, GRU or vanilla RNN).")
    opt = options["word"] = _Options(p)
    opt.add("--text", metavar="FILE", help="UTF-8 text to learn "
            "(default: the built-in corpus of standard-library docstrings)")
    _common_train_options(opt, "word")
    opt.add("--cell", choices=("lstm", "gru", "rnn"), default="lstm",
            help="recurrent cell (rnn: vanilla, tanh)")
    p.add_argument("--bidirectional", action=_Refused, reason=_NO_BIDIRECTIONAL_LM)
    opt.add("--bptt-truncate", type=integer(0), default=None,
            help="with --cell rnn: gradient flows at most this many steps back "
                 "(default: the whole chunk)")
    opt.add("--embedding", type=integer(1), default=64, help="word embedding size")
    opt.add("--vocab-size", type=integer(4), default=8000,
            help="largest vocabulary, <unk> <s> </s> included")
    opt.add("--min-freq", type=integer(1), default=2, help="rarer words become <unk>")
    _lm_options(opt, "word")

    p = tasks.add_parser("sentiment", help="LSTM or GRU sentiment classifier, one direction "
                                           "or both, on labelled reviews",
                         description="Train a sentiment classifier (SentimentClassifier: an "
                                     "LSTM or GRU, one direction or both) on an aclImdb "
                                     "folder, a CSV (text,label) or a JSONL file.")
    opt = options["sentiment"] = _Options(p)
    opt.add("--data", metavar="PATH",
            help="aclImdb folder (train/ for training, test/ for validation), or a .csv / "
                 ".jsonl file of (text, label)")
    _common_train_options(opt, "sentiment")
    opt.add("--cell", choices=("lstm", "gru"), default="lstm", help="recurrent cell")
    opt.add("--bidirectional", action="store_true", default=False,
            help="read each review in both directions (the head sees 2 x --hidden "
                 "features)")
    opt.add("--epochs", type=integer(1), default=5, help="passes over the training set "
            "(--steps, if given, counts steps instead)")
    opt.add("--glove", metavar="FILE", help="initialise the embedding from GloVe vectors")
    opt.add("--freeze-embedding", action="store_true", default=False,
            help="keep the (GloVe) embedding fixed")
    opt.add("--embedding", type=integer(1), default=50,
            help="embedding size (without --glove)")
    opt.add("--pooling", choices=("last", "mean", "max"), default="mean",
            help="how the recurrent layer's outputs over a review become one vector "
                 "(last: the final state, both directions' with --bidirectional)")
    opt.add("--vocab-size", type=integer(3), default=20000,
            help="largest vocabulary, <pad> <unk> included")
    opt.add("--min-freq", type=integer(1), default=2, help="rarer words become <unk>")
    opt.add("--max-len", type=integer(1), default=400,
            help="reviews are cut to this many tokens")
    opt.add("--eval-batch", type=integer(1), default=64, help="batch size for validation")

    p = commands.add_parser("sample", help="continue a prefix with a trained language model",
                            description="Print text generated by a trained language model.")
    p.add_argument("checkpoint", metavar="DIR_OR_CHECKPOINT")
    p.add_argument("--prefix", default=None,
                   help="text to continue (default: the training text's first character "
                        "/ a sentence start)")
    p.add_argument("--length", type=integer(0), default=None,
                   help="tokens to generate (default: 500 characters / 60 words)")
    p.add_argument("--temperature", type=number(0), default=0.8,
                   help="0: greedy; below 1: more conservative (default: 0.8)")
    p.add_argument("--top-k", type=integer(1), default=None,
                   help="sample among the k likeliest")
    p.add_argument("--seed", type=integer(0), default=None, help="seed (default: random)")

    p = commands.add_parser("eval", help="loss, perplexity or accuracy of a trained model",
                            description="Evaluate a trained model; without --text/--data on "
                                        "the validation split of its training data.")
    p.add_argument("checkpoint", metavar="DIR_OR_CHECKPOINT")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", metavar="FILE", help="language models: a UTF-8 text")
    src.add_argument("--data", metavar="PATH",
                     help="classifier: aclImdb folder (its test/ split), .csv or .jsonl")
    p.add_argument("--batch", type=integer(1), default=None,
                   help="batch size (default: the training batch size)")
    p.add_argument("--threads", type=integer(1), default=None, help="kernel threads")

    commands.add_parser("demo", add_help=False,
                        help="one-minute demo: a small char-level LSTM on stdlib docstrings")
    commands.add_parser("config", help="show the build: compiled kernels, OpenMP, BLAS")
    return parser, options


def _lm_options(opt, task):
    d = LM_DEFAULTS[task]
    opt.add("--seq", type=integer(1), default=d["seq"],
            help="steps per chunk T (truncated BPTT)")
    opt.add("--sample-every", type=integer(0), default=d["sample_every"],
            help="print a sample every N steps (0: never)")
    opt.add("--sample-length", type=integer(1), default=d["sample_length"],
            help="tokens per sample printed while training")
    opt.add("--temperature", type=number(0), default=0.8,
            help="of the samples printed (0: greedy)")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, options = build_parser()
    if argv[:1] == ["demo"]:
        from . import demo
        return demo.main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "train":
        _check_combinations(args, options[args.task])
        from .distributed import context
        try:
            dist = context()
        except ImportError as exc:
            print(f"fastlstm train: error: {exc}", file=sys.stderr)
            return 1
        if dist.size > 1:
            return _train_distributed(args, options[args.task], dist)
    try:
        if args.command == "train":
            return _train(args, options[args.task])
        if args.command == "sample":
            return _sample(args)
        if args.command == "eval":
            return _eval(args)
    except (ValueError, OSError, KeyError, FloatingPointError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"fastlstm {args.command}: error: {message}", file=sys.stderr)
        return 1
    if args.command == "config":
        from . import show_config
        show_config()
        return 0
    parser.print_help()
    return 0


# --- train ------------------------------------------------------------------------------

def _check_combinations(args, opt):
    """Options that exclude each other, refused as they are parsed (exit status 2). What
    a resumed run does not type comes from its checkpoint, whose settings were checked
    when they were chosen."""
    if args.task == "word" and args.bptt_truncate is not None:
        cell = args.cell or (None if args.resume else opt.defaults["cell"])
        if cell is not None and cell != "rnn":
            opt.parser.error(f"argument --bptt-truncate: truncates a vanilla RNN's "
                             f"backward pass: it needs --cell rnn, not {cell}")


# Flags about this invocation only, never stored with the run.
ONE_TIME = ("resume", "overwrite", "allow_changed_data")


def _settings(args, opt, stored=None):
    """The run's settings: typed options over the checkpoint's (when resuming) over the
    defaults. A resumed run refuses a changed model option; the data is checked by
    content (``tasks.check_data``)."""
    typed = {k: v for k, v in vars(args).items()
             if k in opt.defaults and v is not None and k not in ONE_TIME}
    if stored is None:
        settings = {**opt.defaults, **typed}
    else:
        conflicts = [k for k, v in typed.items()
                     if k not in RESUMABLE and k in stored and stored[k] != v]
        if conflicts:
            raise ValueError(
                f"{', '.join(_flag(k) for k in conflicts)} cannot change when resuming "
                f"(the checkpoint fixes the model and the data): the run has "
                f"{', '.join(_as_typed(k, stored[k]) for k in conflicts)}")
        settings = {**opt.defaults, **stored,
                    **{k: v for k, v in typed.items() if k in RESUMABLE}}
    for key in ONE_TIME:
        settings.pop(key, None)
    return settings


def _flag(key):
    """The option of a setting: ``--bptt-truncate`` for bptt_truncate."""
    return f"--{key.replace('_', '-')}"


def _as_typed(key, value):
    """A setting's value as the command line says it: ``--hidden 64``,
    ``--bidirectional``, ``no --bidirectional`` (False, or None: not given)."""
    if value is True:
        return _flag(key)
    return f"no {_flag(key)}" if value is False or value is None else f"{_flag(key)} {value}"


def _check_settings(s, opt, where="--"):
    """Every setting through its option's own check (a resumed run's come from the
    checkpoint, which may have been edited by hand). ``where`` prefixes the name."""
    for action in opt.parser._actions:
        key = action.dest
        if key not in s or s[key] is None:
            continue
        name = f"{where}{key.replace('_', '-')}" if where == "--" else f"{where}{key}"
        value = s[key]
        if action.choices is not None and value not in action.choices:
            raise ValueError(f"{name} must be one of {', '.join(action.choices)}, got "
                             f"{value!r}")
        if action.type is None:
            if action.nargs == 0 and not isinstance(value, bool):      # a flag
                raise ValueError(f"{name} must be true or false, got {value!r}")
            if action.nargs != 0 and not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if action.type.__name__ == "integer" and not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        try:
            action.type(repr(value))
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{name} {exc}") from None


def _check_run_metadata(path, ck, opt=None):
    """``tasks.check_run_metadata``, then the stored settings through the options' own
    checks (``opt``: the task's options; by default those of the checkpoint's task)."""
    from . import tasks
    from .checkpoint import CheckpointError
    tasks.check_run_metadata(path, ck)
    if opt is None:
        opt = build_parser()[1][ck.metadata["task"]]
    try:
        _check_settings(ck.metadata["settings"], opt, where="metadata.settings.")
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _train_distributed(args, opt, dist):
    """``_train`` on every rank of an MPI job; any rank's error ends the whole job."""
    from .distributed import run_or_abort
    return run_or_abort(_train, args, opt, dist)


def _train(args, opt, dist=None):
    """``fastlstm train TASK`` on this process (one rank of ``dist``); the exit status."""
    from . import tasks, training
    from .distributed import Context

    dist = dist or Context()
    out = args.out or os.path.join("runs", time.strftime(f"{args.task}-%Y%m%d-%H%M%S"))
    if dist.size > 1:
        out = dist.broadcast_object(out)     # one name, though the ranks' clocks differ
    stdout = sys.stdout if dist.is_root else open(os.devnull, "w")
    run = training.RunDirectory(out)
    try:
        ck = _open_run(args, opt, run, dist, stdout)
        # (a run of a version that stored no --cell gets its model's)
        s = _settings(args, opt, tasks.stored_settings(ck) if ck else None)
        _check_settings(s, opt)
        tasks.resolve_data_paths(s, resumed=ck is not None)
        data = tasks.prepare_data(args.task, s, ck, args.allow_changed_data, dist.size,
                                  stdout)
        print(data.summary, file=stdout)
        job = tasks.prepare_training(args.task, s, data, ck, dist, args.lr, stdout)
        if job.config.start_step >= job.config.steps:
            raise ValueError(f"the run in {out} has done {job.config.start_step} steps "
                             f"already; pass a larger --steps to continue it")
        _announce(args.task, s, data, job, ck is not None, out, dist.size, stdout)
        replaced = run.replace_earlier_run()
        if replaced:
            print(replaced, file=stdout, flush=True)
        result = training.fit(job.model, job.optimizer, job.task, job.config, run=run,
                              scheduler=job.scheduler, dist=dist)
        return _report(result, args.task, job.config, data.baseline, run, out, stdout)
    finally:
        run.release()     # the directory is free again, also for a later call in this process


def _open_run(args, opt, run, dist, stdout):
    """Take the run directory (rank 0) and, with --resume, read and check its checkpoint
    (returned; None for a new run)."""
    from . import tasks
    if dist.is_root:
        # Taken before anything else, so a second run into this directory stops here.
        for note in run.acquire(resume=args.resume, overwrite=bool(args.overwrite)):
            print(note, file=stdout)
    if not args.resume:
        return None
    ck = tasks.load_checkpoint_everywhere(run.checkpoint, dist)
    _check_run_metadata(run.checkpoint, ck, opt)
    if ck.metadata["task"] != args.task:
        raise ValueError(f"{run.checkpoint} holds a {ck.metadata['task']!r} run, not "
                         f"{args.task!r}")
    if dist.is_root:
        dropped = run.trim_log(ck.metadata["step"])
        if dropped:
            print(f"log.csv: dropped {dropped} row{'s' * (dropped > 1)} logged after "
                  f"the checkpoint's step {ck.metadata['step']}", file=stdout)
    return ck


def _announce(task, s, data, job, resumed, out, n_ranks, stdout):
    """The lines before the first step: model, baseline, length of the run."""
    threads, config = job.threads, job.config
    from .tasks import describe_model
    print(f"model: {type(job.model).__name__} ({describe_model(job.model)}), "
          f"{_n_params(job.model):,} parameters; "
          f"{s['optimizer']} lr {job.optimizer.lr:g}, clip {s['clip']:g}, batch {s['batch']}"
          + (f", chunks of {s['seq']}" if task != "sentiment" else "")
          + f", {threads} thread{'s' * (threads > 1)}"
          + (f" per process; data-parallel over {n_ranks} processes (global batch "
             f"{s['batch'] * n_ranks})" if n_ranks > 1 else ""), file=stdout)
    if data.baseline is not None:
        print(f"unigram baseline: validation loss {data.baseline:.3f} (perplexity "
              f"{np.exp(data.baseline):.1f}); a uniform guess: "
              f"{np.log(len(data.vocab)):.3f}", file=stdout)
    print((f"resuming at step {config.start_step} of {config.steps}" if resumed else
           f"training for {config.steps} steps "
           f"({config.steps / config.steps_per_epoch:.1f} epochs)")
          + f"; run directory: {out}", file=stdout, flush=True)


def _report(result, task, config, baseline, run, out, stdout):
    """The lines after the run, and the exit status: 128 + the signal that stopped it."""
    if result["interrupted"]:
        signum = result["signal"] or signal.SIGINT
        print(f"stopped at step {result['step']} of {config.steps} "
              f"({signal.Signals(signum).name}): checkpoint written to {run.checkpoint}; "
              f"continue with: "
              f"fastlstm train {task} --out {out} --resume", file=stdout, flush=True)
        return 128 + signum
    last = result["last_eval"] or {}
    summary = ", ".join(f"{k[6:]} {v:.4g}" for k, v in last.items())
    print(f"done: {result['step']} steps; validation {summary}"
          + (f" (unigram baseline loss {baseline:.3f})" if baseline is not None else "")
          + f"\nrun directory: {out} (checkpoint.npz, log.csv"
          + (", loss.png" if os.path.exists(run.plot) else
             "; pip install matplotlib for loss.png") + ")", file=stdout)
    if task != "sentiment":
        print(f"sample with: fastlstm sample {out}", file=stdout)
    return 0


def _n_params(model):
    return sum(p.data.size for p in model.parameters())


# --- sample and eval --------------------------------------------------------------------

def _load(path):
    from . import checkpoint
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    ck = checkpoint.load(path)
    _check_run_metadata(path, ck)
    return ck


def _sample(args):
    from . import tasks
    print(tasks.sample_text(_load(args.checkpoint), args.prefix, args.length,
                            args.temperature, args.top_k, args.seed))
    return 0


def _eval(args):
    from . import tasks
    print(tasks.evaluate_checkpoint(_load(args.checkpoint), args.text, args.data,
                                    args.batch, args.threads))
    return 0
