"""The ``fastlstm`` command (also ``python -m fastlstm``).

    fastlstm train char      [--text FILE] [--steps N] [--out DIR] [--resume] ...
    fastlstm train word      [--text FILE] [--cell lstm|rnn] ...
    fastlstm train sentiment --data PATH [--glove FILE] ...
    fastlstm sample DIR_OR_CHECKPOINT [--prefix TEXT] [--length N] [--temperature T]
    fastlstm eval   DIR_OR_CHECKPOINT [--text FILE | --data PATH]
    fastlstm demo | config | --version

``fastlstm <command> --help`` lists every option with its default. Without ``--text``
the language models train on the built-in corpus (``fastlstm.corpus``: docstrings of
Python's own standard library, read at run time).
"""
import argparse
import hashlib
import os
import re
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
    opt.add("--hidden", type=integer(1), default=d.get("hidden", 64), help="LSTM hidden size H")
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

    p = tasks.add_parser("char", help="character-level LSTM language model",
                         description="Train a character-level LSTM language model "
                                     "(CharLM) with truncated BPTT.")
    opt = options["char"] = _Options(p)
    opt.add("--text", metavar="FILE", help="UTF-8 text to learn "
            "(default: the built-in corpus of standard-library docstrings)")
    _common_train_options(opt, "char")
    opt.add("--embedding", type=integer(0), default=0,
            help="character embedding size (0: one-hot characters)")
    _lm_options(opt, "char")

    p = tasks.add_parser("word", help="word-level LSTM or vanilla-RNN language model",
                         description="Train a word-level language model (WordLM).")
    opt = options["word"] = _Options(p)
    opt.add("--text", metavar="FILE", help="UTF-8 text to learn "
            "(default: the built-in corpus of standard-library docstrings)")
    _common_train_options(opt, "word")
    opt.add("--cell", choices=("lstm", "rnn"), default="lstm", help="recurrent cell")
    opt.add("--bptt-truncate", type=integer(0), default=None,
            help="vanilla RNN: gradient flows at most this many steps back "
                 "(default: the whole chunk)")
    opt.add("--embedding", type=integer(1), default=64, help="word embedding size")
    opt.add("--vocab-size", type=integer(4), default=8000,
            help="largest vocabulary, <unk> <s> </s> included")
    opt.add("--min-freq", type=integer(1), default=2, help="rarer words become <unk>")
    _lm_options(opt, "word")

    p = tasks.add_parser("sentiment", help="LSTM sentiment classifier on labelled reviews",
                         description="Train an LSTM sentiment classifier (SentimentClassifier)"
                                     " on an aclImdb folder, a CSV (text,label) or a JSONL "
                                     "file.")
    opt = options["sentiment"] = _Options(p)
    opt.add("--data", metavar="PATH",
            help="aclImdb folder (train/ for training, test/ for validation), or a .csv / "
                 ".jsonl file of (text, label)")
    _common_train_options(opt, "sentiment")
    opt.add("--epochs", type=integer(1), default=5, help="passes over the training set "
            "(--steps, if given, counts steps instead)")
    opt.add("--glove", metavar="FILE", help="initialise the embedding from GloVe vectors")
    opt.add("--freeze-embedding", action="store_true", default=False,
            help="keep the (GloVe) embedding fixed")
    opt.add("--embedding", type=integer(1), default=50,
            help="embedding size (without --glove)")
    opt.add("--pooling", choices=("last", "mean", "max"), default="mean",
            help="how the LSTM's outputs over a review become one vector")
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


# --- data -------------------------------------------------------------------------------

def _read_text(path):
    if path is None:
        from .corpus import stdlib_text
        return stdlib_text(), "the built-in corpus (standard-library docstrings)"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        line = 1 + open(path, "rb").read()[:exc.start].count(b"\n")
        raise ValueError(f"{path}:{line}: not UTF-8 ({exc.reason})") from None
    if not text.strip():
        raise ValueError(f"{path}: the file is empty")
    return text, path


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def _word_sentences(text):
    """Token lists, one per sentence, each framed by <s> and </s> (the RNN tutorial's)."""
    from .data import tokenize
    out = []
    for sentence in _SENTENCE_END.split(text):
        tokens = tokenize(sentence)
        if tokens:
            out.append(["<s>"] + tokens + ["</s>"])
    return out


def _detokenize(tokens):
    text = " ".join(t for t in tokens if t != "<s>").replace(" </s>", "\n").replace(
        "</s>", "\n")
    return re.sub(r" ([.,;:!?)\]}])", r"\1", text).replace("\n ", "\n")


def _lm_data(task, text, vocab=None, min_freq=2, vocab_size=None):
    """(ids, vocab) of a text for a char or word model (a given vocab is kept)."""
    from .data import Vocab
    if task == "char":
        vocab = vocab or Vocab.characters(text)
        return vocab.encode(text), vocab
    sentences = _word_sentences(text)
    if not sentences:
        raise ValueError("the text has no words")
    vocab = vocab or Vocab.build(sentences, min_freq=min_freq, max_size=vocab_size,
                                 specials=("<unk>", "<s>", "</s>"))
    return vocab.encode([t for s in sentences for t in s]), vocab


def _reviews(texts, max_len):
    from .data import tokenize
    return [tokenize(t)[:max_len] or ["<unk>"] for t in texts]


def _sentiment_data(path, valid_fraction, seed):
    """(train texts, train labels, valid texts, valid labels, description)."""
    from .data import load_aclimdb, load_labeled
    if path is None:
        raise ValueError("train sentiment needs --data (an aclImdb folder, .csv or .jsonl)")
    if os.path.isdir(path):
        tr_x, tr_y = load_aclimdb(path, "train")
        va_x, va_y = load_aclimdb(path, "test")
        return tr_x, tr_y, va_x, va_y, f"{path} (train/ and test/)"
    texts, labels = load_labeled(path)
    order = np.random.default_rng(seed).permutation(len(texts))
    n_valid = int(round(len(texts) * valid_fraction))
    if n_valid < 1 or n_valid >= len(texts):
        raise ValueError(f"{path}: {len(texts)} examples cannot be split with "
                         f"--valid-fraction {valid_fraction}")
    va, tr = order[:n_valid], order[n_valid:]
    return ([texts[i] for i in tr], labels[tr], [texts[i] for i in va], labels[va],
            f"{path} ({len(tr)} for training, {n_valid} for validation)")


def _resolve_data_path(path, key, resumed):
    """The absolute path of a data file (a run resumed from elsewhere must find it)."""
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(full):
        hint = (f"; pass --{key} with its new location (its content is checked against "
                f"the checkpoint's)" if resumed and key != "glove" else "")
        raise FileNotFoundError(f"--{key} {path}: no such file or directory{hint}")
    return full


def _digest(*parts):
    """SHA-256 of the data as read: texts (strings or lists of them) and label arrays."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
            continue
        for text in part:
            h.update(text.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
        h.update(b"\1")
    return h.hexdigest()


def _check_data(ck, digest, source, allow_changed, out):
    """A resumed run must read the data it was trained on (moved is fine, edited is not,
    unless ``--allow-changed-data``)."""
    if ck is None:
        return
    before = ck.metadata.get("data_sha256")
    if before is None:
        print(f"note: the checkpoint predates data checks; {source} is taken as the "
              f"training data", file=out)
    elif before != digest:
        if not allow_changed:
            raise ValueError(f"{source} is not the data this run was trained on (its content "
                             f"changed: SHA-256 {digest[:12]}..., the checkpoint's "
                             f"{before[:12]}...); pass --allow-changed-data to go on with it")
        print(f"warning: {source} changed since the checkpoint; going on with it "
              f"(--allow-changed-data)", file=out)


def _check_run_metadata(path, ck, opt=None):
    """What ``fastlstm train`` stores beside the model, checked against it (a checkpoint
    edited by hand or from elsewhere must not crash sample, eval or --resume)."""
    from .checkpoint import CheckpointError
    from .data import Vocab
    from .models import CharLM, SentimentClassifier, WordLM
    meta = ck.metadata
    classes = {"char": CharLM, "word": WordLM, "sentiment": SentimentClassifier}
    task = meta.get("task")
    if task not in classes:
        raise CheckpointError(f"{path}: not a checkpoint of 'fastlstm train' (metadata.task "
                              f"is {task!r})")
    if type(ck.model) is not classes[task]:
        raise CheckpointError(f"{path}: metadata.task {task!r} needs a "
                              f"{classes[task].__name__}, the model is "
                              f"{type(ck.model).__name__}")
    vocab = meta.get("vocab")
    if not (isinstance(vocab, dict) and isinstance(vocab.get("itos"), list)
            and isinstance(vocab.get("specials"), list)
            and all(isinstance(t, str) for t in vocab["itos"] + vocab["specials"])
            and vocab["itos"][:len(vocab["specials"])] == vocab["specials"]):
        raise CheckpointError(f"{path}: metadata.vocab: expected {{'itos': [tokens], "
                              f"'specials': [tokens]}} with the specials first")
    try:
        size = len(Vocab.from_dict(vocab))
    except ValueError as exc:
        raise CheckpointError(f"{path}: metadata.vocab: {exc}") from None
    if size != ck.model.config["vocab_size"]:
        raise CheckpointError(f"{path}: metadata.vocab has {size} tokens, the model's "
                              f"vocab_size is {ck.model.config['vocab_size']}")
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: metadata.step: expected an integer >= 0, got "
                              f"{step!r}")
    settings = meta.get("settings")
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path}: metadata.settings: expected an object")
    needed = ("batch", "valid_fraction", "seed") + (
        ("max_len", "data") if task == "sentiment" else ("seq", "text"))
    missing = [k for k in needed if k not in settings]
    if missing:
        raise CheckpointError(f"{path}: metadata.settings lacks {', '.join(missing)}")
    if opt is None:
        opt = build_parser()[1][task]
    try:
        _check_settings(settings, opt, where="metadata.settings.")
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


# --- train ------------------------------------------------------------------------------

# Flags about this invocation only, never stored with the run.
ONE_TIME = ("resume", "overwrite", "allow_changed_data")


def _settings(args, opt, stored=None):
    """The run's settings: typed options over the checkpoint's (when resuming) over the
    defaults. A resumed run refuses a changed model option; the data is checked by
    content (``_check_data``)."""
    typed = {k: v for k, v in vars(args).items()
             if k in opt.defaults and v is not None and k not in ONE_TIME}
    if stored is None:
        settings = {**opt.defaults, **typed}
    else:
        conflicts = [f"--{k.replace('_', '-')}" for k, v in typed.items()
                     if k not in RESUMABLE and k in stored and stored[k] != v]
        if conflicts:
            raise ValueError(f"{', '.join(conflicts)} cannot change when resuming (the "
                             f"checkpoint fixes the model and the data)")
        settings = {**opt.defaults, **stored,
                    **{k: v for k, v in typed.items() if k in RESUMABLE}}
    for key in ONE_TIME:
        settings.pop(key, None)
    return settings


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


def _make_optimizer(name, params, lr):
    from . import optim
    if name == "adam":
        return optim.Adam(params, lr=lr)
    if name == "adagrad":
        return optim.Adagrad(params, lr=lr)
    return optim.SGD(params, lr=lr)


def _set_threads(model, n, optimizer=None):
    """Run every compiled part of a training step on n threads (None: every core)."""
    model.num_threads = n
    for name in ("rnn", "lstm", "head"):
        if hasattr(model, name):
            getattr(model, name).num_threads = n
    if optimizer is not None:
        optimizer.num_threads = n


def _n_params(model):
    return sum(p.data.size for p in model.parameters())


def _train_distributed(args, opt, dist):
    """``_train`` on every rank of an MPI job; any rank's error ends the whole job."""
    from .distributed import run_or_abort
    return run_or_abort(_train, args, opt, dist)


def _load_checkpoint_everywhere(path, dist):
    """Rank 0 reads the checkpoint; every rank gets it (other machines may not see the
    file)."""
    from . import checkpoint
    if dist.size == 1:
        return checkpoint.load(path)
    import tempfile
    data = None
    if dist.is_root:
        with open(path, "rb") as f:
            data = f.read()
    data = dist.broadcast_object(data)
    if dist.is_root:
        return checkpoint.load(path)
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "checkpoint.npz")
        with open(copy, "wb") as f:
            f.write(data)
        return checkpoint.load(copy)


def _train(args, opt, dist=None):
    from . import models, optim, training
    from .data import Vocab, train_valid_split
    from .distributed import Context

    dist = dist or Context()
    task = args.task
    out = args.out or os.path.join("runs", time.strftime(f"{task}-%Y%m%d-%H%M%S"))
    if dist.size > 1:
        out = dist.broadcast_object(out)     # one name, though the ranks' clocks differ
    stdout = sys.stdout if dist.is_root else open(os.devnull, "w")
    run = training.RunDirectory(out)
    if dist.is_root:
        # Taken before anything else, so a second run into this directory stops here.
        for note in run.acquire(resume=args.resume, overwrite=bool(args.overwrite)):
            print(note, file=stdout)
    ck = None
    if args.resume:
        ck = _load_checkpoint_everywhere(run.checkpoint, dist)
        _check_run_metadata(run.checkpoint, ck, opt)
        if ck.metadata["task"] != task:
            raise ValueError(f"{run.checkpoint} holds a {ck.metadata['task']!r} run, not "
                             f"{task!r}")
        if dist.is_root:
            dropped = run.trim_log(ck.metadata["step"])
            if dropped:
                print(f"log.csv: dropped {dropped} row{'s' * (dropped > 1)} logged after "
                      f"the checkpoint's step {ck.metadata['step']}", file=stdout)
    s = _settings(args, opt, ck.metadata["settings"] if ck else None)
    _check_settings(s, opt)
    # (GloVe vectors only initialise a new run: a resumed one does not read them again)
    for key in ("text", "data") if ck else ("text", "data", "glove"):
        if s.get(key) is not None:
            s[key] = _resolve_data_path(s[key], key, resumed=ck is not None)
    n_ranks = dist.size

    # Data and vocabulary (a resumed run keeps its vocabulary).
    vocab = Vocab.from_dict(ck.metadata["vocab"]) if ck else None
    if task in ("char", "word"):
        text, source = _read_text(s["text"])
        digest = _digest([text])
        _check_data(ck, digest, source, args.allow_changed_data, stdout)
        ids, vocab = _lm_data(task, text, vocab, s.get("min_freq", 1), s.get("vocab_size"))
        train_ids, valid_ids = train_valid_split(ids, s["valid_fraction"])
        if len(valid_ids) < 2:
            raise ValueError(f"the text ({len(ids)} tokens) leaves no validation data with "
                             f"--valid-fraction {s['valid_fraction']}")
        steps_per_epoch = training.lm_steps_per_epoch(len(train_ids), s["seq"],
                                                      s["batch"] * n_ranks)
        unit = "characters" if task == "char" else "words"
        print(f"data: {source}: {len(ids):,} {unit} ({len(train_ids):,} training, "
              f"{len(valid_ids):,} validation), vocabulary {len(vocab):,}", file=stdout)
        baseline = training.unigram_loss(train_ids, valid_ids, len(vocab))
    else:
        tr_x, tr_y, va_x, va_y, source = _sentiment_data(s["data"], s["valid_fraction"],
                                                         s["seed"])
        digest = _digest(tr_x, tr_y, va_x, va_y)
        _check_data(ck, digest, source, args.allow_changed_data, stdout)
        train_tok, valid_tok = _reviews(tr_x, s["max_len"]), _reviews(va_x, s["max_len"])
        if vocab is None:
            vocab = Vocab.build(train_tok, min_freq=s["min_freq"], max_size=s["vocab_size"],
                                specials=("<pad>", "<unk>"))
        train_seqs = [vocab.encode(t) for t in train_tok]
        valid_seqs = [vocab.encode(t) for t in valid_tok]
        steps_per_epoch = -(-len(train_seqs) // (s["batch"] * n_ranks))
        print(f"data: {source}: {len(train_seqs):,} training and {len(valid_seqs):,} "
              f"validation reviews ({np.mean(tr_y):.0%} positive), vocabulary {len(vocab):,}",
              file=stdout)
        baseline = None

    # Model and optimizer.
    if ck:
        model, optimizer = ck.model, ck.optimizer
        if args.lr is not None:
            optimizer.lr = args.lr
    else:
        V = len(vocab)
        if task == "char":
            model = models.CharLM(V, s["hidden"], s["layers"], s["embedding"] or None,
                                  s["dropout"], seed=s["seed"])
        elif task == "word":
            model = models.WordLM(V, s["embedding"], s["hidden"], s["layers"], s["cell"],
                                  s["dropout"], seed=s["seed"],
                                  bptt_truncate=s["bptt_truncate"])
        else:
            weight = None
            if s["glove"]:
                from .data import load_glove
                weight, coverage = load_glove(s["glove"], vocab, seed=s["seed"])
                print(f"GloVe: {s['glove']}: {weight.shape[1]}-dimensional vectors for "
                      f"{coverage:.1%} of the vocabulary", file=stdout)
            model = models.SentimentClassifier(
                V, weight.shape[1] if weight is not None else s["embedding"], s["hidden"],
                s["layers"], s["pooling"], s["dropout"], s["freeze_embedding"],
                seed=s["seed"], embedding_weight=weight)
        optimizer = _make_optimizer(s["optimizer"], model.parameters(), s["lr"])
    if not ck:
        dist.broadcast_parameters(model)     # every rank starts from rank 0's weights
    if s["threads"] is None and dist.local_size > 1:
        # The ranks on one machine share its cores.
        from ._threads import usable_cores
        s_threads = max(1, usable_cores() // dist.local_size)
    else:
        s_threads = s["threads"]
    _set_threads(model, s_threads, optimizer)
    scheduler = optim.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
    meta = ck.metadata if ck else {}
    if meta.get("scheduler"):
        scheduler.best = meta["scheduler"]["best"]
        scheduler.bad_epochs = meta["scheduler"]["bad_epochs"]
    start_step = meta.get("step", 0)
    total_steps = s["steps"] or s["epochs"] * steps_per_epoch
    if start_step >= total_steps:
        raise ValueError(f"the run in {out} has done {start_step} steps already; pass a "
                         f"larger --steps to continue it")

    from ._threads import resolve_num_threads
    threads = resolve_num_threads(s_threads)
    print(f"model: {type(model).__name__}, {_n_params(model):,} parameters; "
          f"{s['optimizer']} lr {optimizer.lr:g}, clip {s['clip']:g}, batch {s['batch']}"
          + (f", chunks of {s['seq']}" if task != "sentiment" else "")
          + f", {threads} thread{'s' * (threads > 1)}"
          + (f" per process; data-parallel over {n_ranks} processes (global batch "
             f"{s['batch'] * n_ranks})" if n_ranks > 1 else ""), file=stdout)
    if baseline is not None:
        print(f"unigram baseline: validation loss {baseline:.3f} (perplexity "
              f"{np.exp(baseline):.1f}); a uniform guess: {np.log(len(vocab)):.3f}",
              file=stdout)
    print((f"resuming at step {start_step} of {total_steps}" if ck else
           f"training for {total_steps} steps ({total_steps / steps_per_epoch:.1f} epochs)")
          + f"; run directory: {out}", file=stdout, flush=True)

    # The loop.
    if task == "sentiment":
        epoch_batches = training.classifier_epoch_batches(train_seqs, tr_y, s["batch"],
                                                          s["seed"], dist=dist)
        grad_step = training.classifier_grad_step(model)

        def evaluate():
            return training.classifier_evaluate(model, valid_seqs, va_y, s["eval_batch"],
                                                dist=dist)
        sample_fn, title = None, "sentiment classifier"
    else:
        epoch_batches = training.lm_epoch_batches(train_ids, s["seq"], s["batch"], dist)
        grad_step = training.lm_grad_step(model, n_ranks)

        def evaluate():
            return training.lm_evaluate(model, valid_ids, s["seq"], s["batch"], dist)
        prefix = _default_prefix(task, vocab, text)

        def sample_fn():
            out_ids = models.sample(model, prefix, s["sample_length"], s["temperature"],
                                    seed=s["seed"])
            return _render(task, vocab, list(prefix) + out_ids)
        title = f"{task}-level language model"

    def metadata(step, epoch, extra):
        return dict(task=task, vocab=vocab.to_dict(), settings=s, step=step, epoch=epoch,
                    data_sha256=digest, fastlstm_version=__version__, **extra)

    result = training.fit(
        model, optimizer, run=run, steps=total_steps, steps_per_epoch=steps_per_epoch,
        epoch_batches=epoch_batches, grad_step=grad_step, evaluate=evaluate, clip=s["clip"],
        metadata=metadata, start_step=start_step, tokens_seen=meta.get("tokens", 0),
        seconds_before=meta.get("seconds", 0.0), log_every=s["log_every"],
        save_every=s["save_every"], sample_every=s.get("sample_every") or 0,
        sample=sample_fn if task != "sentiment" else None, scheduler=scheduler,
        progress=s["progress"], title=title, baseline=baseline,
        dist=dist)

    if result["interrupted"]:
        signum = result["signal"] or signal.SIGINT
        print(f"stopped at step {result['step']} of {total_steps} "
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


def _default_prefix(task, vocab, text=None):
    if task == "word":
        return [vocab.stoi["<s>"]]
    # A newline starts a paragraph (a docstring, in the built-in corpus).
    first = "\n" if "\n" in vocab.stoi else (text or " ")[0]
    return [vocab.stoi.get(first, vocab.unk if vocab.unk is not None else 0)]


def _render(task, vocab, ids):
    if task == "char":
        return vocab.decode(ids)
    return _detokenize([vocab.itos[i] for i in ids])


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
    from .data import Vocab, tokenize
    from .models import sample
    ck = _load(args.checkpoint)
    task = ck.metadata["task"]
    if task == "sentiment":
        raise ValueError("sample needs a language model; this checkpoint is a sentiment "
                         "classifier (try: fastlstm eval)")
    vocab = Vocab.from_dict(ck.metadata["vocab"])
    if args.prefix is None or args.prefix == "":
        prefix = _default_prefix(task, vocab, "\n")
    elif task == "char":
        prefix = list(vocab.encode(args.prefix))
    else:
        prefix = [vocab.stoi["<s>"]] + list(vocab.encode(tokenize(args.prefix)))
    length = args.length if args.length is not None else (500 if task == "char" else 60)
    out = sample(ck.model, prefix, length, args.temperature, top_k=args.top_k,
                 seed=args.seed)
    if task == "char":
        shown = (args.prefix or "") + vocab.decode(out)
    else:
        shown = _render(task, vocab, prefix + out)
    print(shown)
    return 0


def _eval(args):
    from . import training
    from .data import Vocab, train_valid_split
    ck = _load(args.checkpoint)
    task, s = ck.metadata["task"], ck.metadata["settings"]
    vocab = Vocab.from_dict(ck.metadata["vocab"])
    model = ck.model
    _set_threads(model, args.threads)
    batch = s["batch"] if args.batch is None else args.batch
    model.eval()
    if task == "sentiment":
        if args.text:
            raise ValueError("a sentiment classifier is evaluated on --data, not --text")
        if args.data:
            from .data import load_aclimdb, load_labeled
            texts, labels = (load_aclimdb(args.data, "test") if os.path.isdir(args.data)
                             else load_labeled(args.data))
            where = args.data
        else:
            tr_x, tr_y, texts, labels, _ = _sentiment_data(s["data"], s["valid_fraction"],
                                                           s["seed"])
            where = f"the validation split of {s['data']}"
            _warn_if_not_trained_on(ck, _digest(tr_x, tr_y, texts, labels), s["data"])
        seqs = [vocab.encode(t) for t in _reviews(texts, s["max_len"])]
        m = training.classifier_evaluate(model, seqs, labels, batch)
        print(f"{where}: {len(seqs):,} reviews, loss {m['valid_loss']:.4f}, accuracy "
              f"{m['valid_accuracy']:.2%}")
        return 0
    if args.data:
        raise ValueError("a language model is evaluated on --text, not --data")
    text, source = _read_text(args.text if args.text else s["text"])
    ids, _ = _lm_data(task, text, vocab)
    trained_on = ck.metadata.get("data_sha256")
    if args.text:
        where = args.text
        if trained_on == _digest([text]):
            print(f"note: {args.text} is the text this model was trained on; the loss "
                  f"covers its training split too", file=sys.stderr)
    else:
        _warn_if_not_trained_on(ck, _digest([text]), source)
        ids = train_valid_split(ids, s["valid_fraction"])[1]
        where = f"the validation split of {source}"
    m = training.lm_evaluate(model, ids, s["seq"], batch)
    unit = "character" if task == "char" else "word"
    print(f"{where}: {len(ids):,} {unit}s, loss {m['valid_loss']:.4f} nats per {unit}, "
          f"perplexity {m['valid_perplexity']:.3f}")
    return 0


def _warn_if_not_trained_on(ck, digest, source):
    trained_on = ck.metadata.get("data_sha256")
    if trained_on is not None and trained_on != digest:
        print(f"warning: {source} is not the data this model was trained on (its content "
              f"changed since); its validation split is not the one held out in training",
              file=sys.stderr)
