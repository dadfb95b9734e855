"""The three tasks of ``fastlstm train``: a character-level and a word-level language
model, and a sentiment classifier.

For each task this module reads and encodes the data (``prepare_data``), builds or
restores the model, its optimizer and scheduler and hands ``training.fit`` what it
needs (``prepare_training``), and serves ``fastlstm sample`` and ``fastlstm eval``
(``sample_text``, ``evaluate_checkpoint``). It checks what a run stores beside its model
(``check_run_metadata``) and that a resumed run reads the data it was trained on
(``digest``, ``check_data``). ``fastlstm.cli`` parses the options into a dict of
settings and calls these.
"""
import hashlib
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from . import __version__, checkpoint, models, optim, training
from ._threads import resolve_num_threads, usable_cores
from .checkpoint import CheckpointError
from .data import (Vocab, load_aclimdb, load_glove, load_labeled, tokenize,
                   train_valid_split)
from .distributed import Context

__all__ = ["TASKS", "TaskData", "Training", "read_text", "word_sentences", "detokenize",
           "lm_data", "reviews", "sentiment_data", "resolve_data_paths", "digest",
           "check_data", "check_run_metadata", "MODEL_SETTINGS", "model_settings",
           "stored_settings", "describe_model", "load_checkpoint_everywhere",
           "prepare_data", "build_model", "make_optimizer", "set_threads",
           "prepare_training", "default_prefix", "render", "sample_text",
           "evaluate_checkpoint"]

# The model class of each task.
TASKS = {"char": models.CharLM, "word": models.WordLM,
         "sentiment": models.SentimentClassifier}

# The settings of each task that are also its model's config fields of the same name.
# The model (its config) is what a checkpoint rebuilds, so where a run's stored settings
# lack one (runs of versions before it was an option) the model's value stands in.
MODEL_SETTINGS = {"char": ("cell",), "word": ("cell",),
                  "sentiment": ("cell", "bidirectional")}


def model_settings(task, model):
    """{setting: value} of ``MODEL_SETTINGS[task]`` as ``model`` was built."""
    return {key: model.config[key] for key in MODEL_SETTINGS[task]}


def stored_settings(ck):
    """A run checkpoint's settings, completed by its model's (``MODEL_SETTINGS``)."""
    return {**model_settings(ck.metadata["task"], ck.model), **ck.metadata["settings"]}


def describe_model(model):
    """``LSTM``, ``GRU``, ``RNN``, ``bidirectional GRU``: the model's recurrent layer."""
    return (("bidirectional " if model.config.get("bidirectional") else "")
            + model.config["cell"].upper())


# --- reading data -----------------------------------------------------------------------

def read_text(path):
    """(text, description) of a UTF-8 file, or of the built-in corpus when ``path`` is
    None. ValueError naming the line of the first byte that is not UTF-8, or for an
    empty file."""
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


def word_sentences(text):
    """Token lists, one per sentence, each framed by <s> and </s> (the RNN tutorial's)."""
    out = []
    for sentence in _SENTENCE_END.split(text):
        tokens = tokenize(sentence)
        if tokens:
            out.append(["<s>"] + tokens + ["</s>"])
    return out


def detokenize(tokens):
    """Words back to text: a line per sentence, punctuation against the word before."""
    text = " ".join(t for t in tokens if t != "<s>").replace(" </s>", "\n").replace(
        "</s>", "\n")
    return re.sub(r" ([.,;:!?)\]}])", r"\1", text).replace("\n ", "\n")


def lm_data(task, text, vocab=None, min_freq=2, vocab_size=None):
    """(ids, vocab) of a text for a char or word model (a given vocab is kept)."""
    if task == "char":
        vocab = vocab or Vocab.characters(text)
        return vocab.encode(text), vocab
    sentences = word_sentences(text)
    if not sentences:
        raise ValueError("the text has no words")
    vocab = vocab or Vocab.build(sentences, min_freq=min_freq, max_size=vocab_size,
                                 specials=("<unk>", "<s>", "</s>"))
    return vocab.encode([t for s in sentences for t in s]), vocab


def reviews(texts, max_len):
    """Each text's tokens, cut to ``max_len`` (an empty review becomes ["<unk>"])."""
    return [tokenize(t)[:max_len] or ["<unk>"] for t in texts]


def sentiment_data(path, valid_fraction, seed):
    """(train texts, train labels, valid texts, valid labels, description) of an aclImdb
    folder (its train/ and test/) or of a .csv / .jsonl file (split with ``seed``)."""
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
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(full):
        hint = (f"; pass --{key} with its new location (its content is checked against "
                f"the checkpoint's)" if resumed and key != "glove" else "")
        raise FileNotFoundError(f"--{key} {path}: no such file or directory{hint}")
    return full


def resolve_data_paths(settings, resumed):
    """Make the settings' data paths absolute (a run resumed from elsewhere must find
    them); FileNotFoundError for a missing one. GloVe vectors only initialise a new run:
    a resumed one does not read them again."""
    for key in ("text", "data") if resumed else ("text", "data", "glove"):
        if settings.get(key) is not None:
            settings[key] = _resolve_data_path(settings[key], key, resumed)


# --- the data a run was trained on ------------------------------------------------------

def digest(*parts):
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


def check_data(ck, digest, source, allow_changed, out):
    """A resumed run must read the data it was trained on (moved is fine, edited is not,
    unless ``allow_changed``); notes and warnings go to ``out``. Nothing to check for a
    new run (``ck`` None)."""
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


def _warn_if_not_trained_on(ck, digest, source, err):
    trained_on = ck.metadata.get("data_sha256")
    if trained_on is not None and trained_on != digest:
        print(f"warning: {source} is not the data this model was trained on (its content "
              f"changed since); its validation split is not the one held out in training",
              file=err)


def check_run_metadata(path, ck):
    """What ``fastlstm train`` stores beside the model (task, vocabulary, step, the
    settings' presence), checked against it: a checkpoint edited by hand or from
    elsewhere must not crash sample, eval or --resume. CheckpointError naming ``path``
    and the field. The settings' values are the command line's to check."""
    meta = ck.metadata
    task = meta.get("task")
    if task not in TASKS:
        raise CheckpointError(f"{path}: not a checkpoint of 'fastlstm train' (metadata.task "
                              f"is {task!r})")
    if type(ck.model) is not TASKS[task]:
        raise CheckpointError(f"{path}: metadata.task {task!r} needs a "
                              f"{TASKS[task].__name__}, the model is "
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
    for key, value in model_settings(task, ck.model).items():
        if key in settings and (settings[key] != value
                                or type(settings[key]) is not type(value)):
            raise CheckpointError(f"{path}: metadata.settings.{key} is "
                                  f"{settings[key]!r:.60}, but the model's {key} is "
                                  f"{value!r}")

    def number(value):
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and value >= 0)

    # Where the run stands; optional in checkpoints of older versions.
    checks = {"tokens": lambda v: number(v) and isinstance(v, int),
              "processes": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
              "seconds": number,
              "data_sha256": lambda v: isinstance(v, str),
              "scheduler": lambda v: (v is None or isinstance(v, dict)
                                      and isinstance(v.get("best"), (int, float))
                                      and not isinstance(v.get("best"), bool)
                                      and isinstance(v.get("bad_epochs"), int)
                                      and not isinstance(v.get("bad_epochs"), bool)
                                      and v["bad_epochs"] >= 0)}
    for key, valid in checks.items():
        if key in meta and not valid(meta[key]):
            raise CheckpointError(f"{path}: metadata.{key}: unexpected value "
                                  f"{meta[key]!r:.60}")


def load_checkpoint_everywhere(path, dist):
    """Rank 0 reads the checkpoint; every rank gets it (other machines may not see the
    file)."""
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


# --- training ---------------------------------------------------------------------------

@dataclass
class TaskData:
    """A task's data as one run trains on it.

    ``train`` and ``valid`` are id streams (language models) or (sequences, labels)
    pairs (the classifier); ``text`` is the language models' whole text; ``summary`` the
    line that describes the data; ``baseline`` the unigram validation loss (language
    models only); ``digest`` what ``check_data`` compares."""
    task: str
    vocab: Vocab
    train: Any
    valid: Any
    digest: str
    steps_per_epoch: int
    summary: str
    baseline: Optional[float] = None
    text: Optional[str] = None


def prepare_data(task, s, ck=None, allow_changed=False, n_ranks=1, out=None):
    """Read, check, split and encode ``task``'s data as the settings ``s`` say. A
    resumed run (``ck``, its checkpoint) keeps its vocabulary and must read the data it
    was trained on (``check_data``, its notes to ``out``). ``n_ranks`` processes share
    each batch."""
    out = out or sys.stdout
    vocab = Vocab.from_dict(ck.metadata["vocab"]) if ck else None
    if task in ("char", "word"):
        text, source = read_text(s["text"])
        data_digest = digest([text])
        check_data(ck, data_digest, source, allow_changed, out)
        ids, vocab = lm_data(task, text, vocab, s.get("min_freq", 1), s.get("vocab_size"))
        train_ids, valid_ids = train_valid_split(ids, s["valid_fraction"])
        if len(valid_ids) < 2:
            raise ValueError(f"the text ({len(ids)} tokens) leaves no validation data with "
                             f"--valid-fraction {s['valid_fraction']}")
        steps_per_epoch = training.lm_steps_per_epoch(len(train_ids), s["seq"],
                                                      s["batch"] * n_ranks)
        unit = "characters" if task == "char" else "words"
        summary = (f"data: {source}: {len(ids):,} {unit} ({len(train_ids):,} training, "
                   f"{len(valid_ids):,} validation), vocabulary {len(vocab):,}")
        return TaskData(task, vocab, train_ids, valid_ids, data_digest, steps_per_epoch,
                        summary, training.unigram_loss(train_ids, valid_ids, len(vocab)),
                        text)
    tr_x, tr_y, va_x, va_y, source = sentiment_data(s["data"], s["valid_fraction"],
                                                    s["seed"])
    data_digest = digest(tr_x, tr_y, va_x, va_y)
    check_data(ck, data_digest, source, allow_changed, out)
    train_tok, valid_tok = reviews(tr_x, s["max_len"]), reviews(va_x, s["max_len"])
    if vocab is None:
        vocab = Vocab.build(train_tok, min_freq=s["min_freq"], max_size=s["vocab_size"],
                            specials=("<pad>", "<unk>"))
    train_seqs = [vocab.encode(t) for t in train_tok]
    valid_seqs = [vocab.encode(t) for t in valid_tok]
    steps_per_epoch = -(-len(train_seqs) // (s["batch"] * n_ranks))
    summary = (f"data: {source}: {len(train_seqs):,} training and {len(valid_seqs):,} "
               f"validation reviews ({np.mean(tr_y):.0%} positive), vocabulary "
               f"{len(vocab):,}")
    return TaskData(task, vocab, (train_seqs, tr_y), (valid_seqs, va_y), data_digest,
                    steps_per_epoch, summary)


def build_model(task, s, vocab, out=None):
    """A new model for ``task`` from the settings ``s``; the classifier's embedding
    starts from the GloVe vectors of ``s["glove"]`` when given (noted to ``out``, default:
    stdout)."""
    V = len(vocab)
    if task == "char":
        return models.CharLM(V, s["hidden"], s["layers"], s["embedding"] or None,
                             s["dropout"], seed=s["seed"], cell=s["cell"])
    if task == "word":
        return models.WordLM(V, s["embedding"], s["hidden"], s["layers"], s["cell"],
                             s["dropout"], seed=s["seed"], bptt_truncate=s["bptt_truncate"])
    weight = None
    if s["glove"]:
        weight, coverage = load_glove(s["glove"], vocab, seed=s["seed"])
        print(f"GloVe: {s['glove']}: {weight.shape[1]}-dimensional vectors for "
              f"{coverage:.1%} of the vocabulary", file=out or sys.stdout)
    return models.SentimentClassifier(
        V, weight.shape[1] if weight is not None else s["embedding"], s["hidden"],
        s["layers"], s["pooling"], s["dropout"], s["freeze_embedding"], seed=s["seed"],
        embedding_weight=weight, cell=s["cell"], bidirectional=s["bidirectional"])


def make_optimizer(name, params, lr):
    """The optimizer ``name`` ("adam", "adagrad" or "sgd") over ``params``."""
    if name == "adam":
        return optim.Adam(params, lr=lr)
    if name == "adagrad":
        return optim.Adagrad(params, lr=lr)
    return optim.SGD(params, lr=lr)


def set_threads(model, n, optimizer=None):
    """Run every compiled part of a training step on n threads (None: every core)."""
    model.num_threads = n
    for name in ("rnn", "lstm", "gru", "head"):
        if hasattr(model, name):
            getattr(model, name).num_threads = n
    if optimizer is not None:
        optimizer.num_threads = n


@dataclass
class Training:
    """What ``training.fit`` takes for one run: the model, its optimizer and scheduler,
    the task's functions (``training.Task``), the ``training.RunConfig``; ``threads``
    is the number of kernel threads each process runs."""
    model: Any
    optimizer: Any
    scheduler: Any
    task: training.Task
    config: training.RunConfig
    threads: int


def prepare_training(task, s, data, ck=None, dist=None, lr=None, out=None):
    """The model, optimizer, scheduler and fit functions of a run of ``task`` on
    ``data`` (a ``TaskData``) with the settings ``s``: new ones, or those of the
    checkpoint ``ck`` when resuming (``lr``, when given, replaces its learning rate).
    Every process of ``dist`` starts from rank 0's weights; the processes on one machine
    share its cores unless ``s["threads"]`` says otherwise."""
    dist = dist or Context()
    if ck:
        # The global batch and each epoch's order depend on the number of processes.
        trained_on = ck.metadata.get("processes", 1)
        if trained_on != dist.size:
            raise ValueError(f"this run was trained on {trained_on} process"
                             f"{'es' * (trained_on != 1)}; resume it on as many "
                             f"(mpiexec -n {trained_on}), not {dist.size}: the global "
                             f"batch and the data order depend on it")
        model, optimizer = ck.model, ck.optimizer
        if lr is not None:
            optimizer.lr = lr
    else:
        model = build_model(task, s, data.vocab, out)
        optimizer = make_optimizer(s["optimizer"], model.parameters(), s["lr"])
        dist.broadcast_parameters(model)
    threads = s["threads"]
    if threads is None and dist.local_size > 1:
        threads = max(1, usable_cores() // dist.local_size)
    set_threads(model, threads, optimizer)
    scheduler = optim.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
    meta = ck.metadata if ck else {}
    if meta.get("scheduler"):
        scheduler.best = meta["scheduler"]["best"]
        scheduler.bad_epochs = meta["scheduler"]["bad_epochs"]
    config = training.RunConfig(
        steps=s["steps"] or s["epochs"] * data.steps_per_epoch,
        steps_per_epoch=data.steps_per_epoch, clip=s["clip"], log_every=s["log_every"],
        save_every=s["save_every"], sample_every=s.get("sample_every") or 0,
        progress=s["progress"], baseline=data.baseline,
        title=("sentiment classifier" if task == "sentiment"
               else f"{task}-level language model"),
        start_step=meta.get("step", 0), tokens_seen=meta.get("tokens", 0),
        seconds_before=meta.get("seconds", 0.0))
    return Training(model, optimizer, scheduler, _fit_task(task, model, data, s, dist),
                    config, resolve_num_threads(threads))


def _fit_task(task, model, data, s, dist):
    def metadata(step, epoch, extra):
        return dict(task=task, vocab=data.vocab.to_dict(), settings=s, step=step,
                    epoch=epoch, data_sha256=data.digest, processes=dist.size,
                    fastlstm_version=__version__, **extra)

    if task == "sentiment":
        (train_seqs, train_labels), (valid_seqs, valid_labels) = data.train, data.valid
        return training.Task(
            training.classifier_epoch_batches(train_seqs, train_labels, s["batch"],
                                              s["seed"], dist=dist),
            training.classifier_grad_step(model),
            lambda: training.classifier_evaluate(model, valid_seqs, valid_labels,
                                                 s["eval_batch"], dist=dist),
            metadata)
    prefix = default_prefix(task, data.vocab, data.text)

    def sample():
        ids = models.sample(model, prefix, s["sample_length"], s["temperature"],
                            seed=s["seed"])
        return render(task, data.vocab, list(prefix) + ids)

    return training.Task(
        training.lm_epoch_batches(data.train, s["seq"], s["batch"], dist),
        training.lm_grad_step(model, dist.size),
        lambda: training.lm_evaluate(model, data.valid, s["seq"], s["batch"], dist),
        metadata, sample)


# --- sample and eval --------------------------------------------------------------------

def default_prefix(task, vocab, text=None):
    """The ids a sample starts from without a prefix: a sentence start (words), else a
    newline, or the text's first character when the vocabulary has no newline."""
    if task == "word":
        return [vocab.stoi["<s>"]]
    # A newline starts a paragraph (a docstring, in the built-in corpus).
    first = "\n" if "\n" in vocab.stoi else (text or " ")[0]
    return [vocab.stoi.get(first, vocab.unk if vocab.unk is not None else 0)]


def render(task, vocab, ids):
    """Ids as text: characters joined, or words detokenized."""
    if task == "char":
        return vocab.decode(ids)
    return detokenize([vocab.itos[i] for i in ids])


def sample_text(ck, prefix=None, length=None, temperature=0.8, top_k=None, seed=None):
    """Text a language model's checkpoint ``ck`` generates after ``prefix`` (None or
    "": ``default_prefix``), the prefix included; ``length`` tokens (None: 500
    characters or 60 words)."""
    task = ck.metadata["task"]
    if task == "sentiment":
        raise ValueError("sample needs a language model; this checkpoint is a sentiment "
                         "classifier (try: fastlstm eval)")
    vocab = Vocab.from_dict(ck.metadata["vocab"])
    if prefix is None or prefix == "":
        ids = default_prefix(task, vocab, "\n")
    elif task == "char":
        ids = list(vocab.encode(prefix))
    else:
        ids = [vocab.stoi["<s>"]] + list(vocab.encode(tokenize(prefix)))
    if length is None:
        length = 500 if task == "char" else 60
    out = models.sample(ck.model, ids, length, temperature, top_k=top_k, seed=seed)
    if task == "char":
        return (prefix or "") + vocab.decode(out)
    return render(task, vocab, ids + out)


def evaluate_checkpoint(ck, text=None, data=None, batch=None, threads=None, err=None):
    """The line reporting the loss of the checkpoint ``ck``'s model, and its perplexity
    or accuracy: on ``text`` (a language model) or ``data`` (the classifier), or
    without either on the validation split of the training data. Notes and warnings
    about which data it is go to ``err`` (default: stderr)."""
    err = err or sys.stderr
    task, s = ck.metadata["task"], ck.metadata["settings"]
    vocab = Vocab.from_dict(ck.metadata["vocab"])
    model = ck.model
    set_threads(model, threads)
    batch = s["batch"] if batch is None else batch
    model.eval()
    if task == "sentiment":
        if text:
            raise ValueError("a sentiment classifier is evaluated on --data, not --text")
        if data:
            texts, labels = (load_aclimdb(data, "test") if os.path.isdir(data)
                             else load_labeled(data))
            where = data
        else:
            tr_x, tr_y, texts, labels, _ = sentiment_data(s["data"], s["valid_fraction"],
                                                          s["seed"])
            where = f"the validation split of {s['data']}"
            _warn_if_not_trained_on(ck, digest(tr_x, tr_y, texts, labels), s["data"], err)
        seqs = [vocab.encode(t) for t in reviews(texts, s["max_len"])]
        m = training.classifier_evaluate(model, seqs, labels, batch)
        return (f"{where}: {len(seqs):,} reviews, loss {m['valid_loss']:.4f}, accuracy "
                f"{m['valid_accuracy']:.2%}")
    if data:
        raise ValueError("a language model is evaluated on --text, not --data")
    content, source = read_text(text if text else s["text"])
    ids, _ = lm_data(task, content, vocab)
    if text:
        where = text
        if ck.metadata.get("data_sha256") == digest([content]):
            print(f"note: {text} is the text this model was trained on; the loss "
                  f"covers its training split too", file=err)
    else:
        _warn_if_not_trained_on(ck, digest([content]), source, err)
        ids = train_valid_split(ids, s["valid_fraction"])[1]
        where = f"the validation split of {source}"
    m = training.lm_evaluate(model, ids, s["seq"], batch)
    unit = "character" if task == "char" else "word"
    return (f"{where}: {len(ids):,} {unit}s, loss {m['valid_loss']:.4f} nats per {unit}, "
            f"perplexity {m['valid_perplexity']:.3f}")
