"""Data for the language models and classifiers (issue 7, first part): vocabularies, a
plain regex word tokenizer, LM batching into (T, B) streams with a validation split, and
length-bucketed batches for classification. Knows no layer."""
import re
from collections import Counter

import numpy as np

__all__ = ["tokenize", "Vocab", "train_valid_split", "lm_batches", "bucketed_batches",
           "load_labeled", "load_aclimdb", "load_glove"]

# Words (letters, digits, apostrophes inside), numbers, and single punctuation marks.
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?|[^\sA-Za-z0-9]")


def tokenize(text, lower=True):
    """Split text into words and punctuation marks, e.g. "Don't stop!" ->
    ["don't", "stop", "!"]. No NLTK needed."""
    return _TOKEN.findall(text.lower() if lower else text)


class Vocab:
    """Tokens <-> ids. Special tokens come first (``unk`` at id 0 when given), then the
    corpus tokens by decreasing frequency (ties alphabetical), cut by ``min_freq`` and
    ``max_size``. Unknown tokens map to ``unk`` (an error without one)."""

    def __init__(self, tokens, specials=()):
        self.itos = list(specials) + [t for t in tokens if t not in set(specials)]
        if len(set(self.itos)) != len(self.itos):
            raise ValueError("vocabulary tokens must be unique")
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        self.specials = tuple(specials)
        self.unk = self.stoi.get("<unk>")

    @classmethod
    def build(cls, token_lists, min_freq=1, max_size=None, specials=("<unk>",)):
        """From an iterable of token sequences (or one string per character for chars)."""
        counts = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        ranked = sorted((t for t, c in counts.items() if c >= min_freq and t not in specials),
                        key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[:max(0, max_size - len(specials))]
        return cls(ranked, specials)

    @classmethod
    def characters(cls, text, min_freq=1, max_size=None, unk="<unk>"):
        """A character vocabulary of ``text`` (with an unknown token unless unk=None)."""
        return cls.build([text], min_freq, max_size, specials=(unk,) if unk else ())

    def __len__(self):
        return len(self.itos)

    def encode(self, tokens):
        """ids (int64) of ``tokens`` (a string is encoded character by character)."""
        try:
            return np.array([self.stoi[t] if t in self.stoi else self.unk_id(t)
                             for t in tokens], dtype=np.int64)
        except KeyError as exc:
            raise KeyError(f"token {exc.args[0]!r} is not in the vocabulary, which has no "
                           f"unknown token") from None

    def unk_id(self, token):
        if self.unk is None:
            raise KeyError(token)
        return self.unk

    def decode(self, ids, sep=""):
        return sep.join(self.itos[int(i)] for i in ids)

    def to_dict(self):
        """JSON-ready form (for checkpoints); ``Vocab.from_dict`` inverts it."""
        return {"itos": self.itos, "specials": list(self.specials)}

    @classmethod
    def from_dict(cls, d):
        specials = tuple(d["specials"])
        return cls(d["itos"][len(specials):], specials)


def train_valid_split(ids, valid_fraction=0.1):
    """The stream cut once: the last ``valid_fraction`` of it for validation."""
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"valid_fraction must lie in [0, 1), got {valid_fraction}")
    ids = np.asarray(ids)
    cut = len(ids) - int(round(len(ids) * valid_fraction))
    return ids[:cut], ids[cut:]


def lm_batches(ids, T, B):
    """Yield (x, y) pairs of (T, B) int64 arrays walking B parallel streams through
    ``ids`` in order, y one token ahead of x: chunk k+1 of stream b continues chunk k,
    so a model may carry its hidden state across chunks (truncated BPTT)."""
    ids = np.asarray(ids, dtype=np.int64)
    stream_len = (len(ids) - 1) // B
    if stream_len < 1:
        raise ValueError(f"{len(ids)} tokens are too few for {B} streams")
    starts = np.arange(B) * stream_len
    for pos in range(0, stream_len, T):
        steps = min(T, stream_len - pos)
        idx = starts[None, :] + pos + np.arange(steps)[:, None]
        yield ids[idx], ids[idx + 1]


def bucketed_batches(sequences, batch_size, pad_id=0, shuffle=True, seed=None):
    """Yield (ids (T, B), lengths (B,), index (B,)) batches of similar-length sequences,
    padded with ``pad_id`` to the longest in the batch (time-major, ready for
    ``lengths=``); ``index`` maps each column back to ``sequences``."""
    lengths = np.array([len(s) for s in sequences])
    order = np.argsort(lengths, kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle:
        np.random.default_rng(seed).shuffle(batches)
    for idx in batches:
        L = lengths[idx]
        out = np.full((max(int(L.max()), 1), len(idx)), pad_id, dtype=np.int64)
        for col, i in enumerate(idx):
            out[:L[col], col] = sequences[i]
        yield out, L, idx


# --- files ------------------------------------------------------------------------------

def _decoded_lines(path):
    """The file's lines as text, with the file and line named on bytes that are not UTF-8."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not UTF-8 ({exc.reason} at byte "
                                 f"{exc.start})") from None


_LABELS = {"0": 0, "1": 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1}


def _label(value, where):
    key = str(value).strip().lower()
    if key not in _LABELS:
        raise ValueError(f"{where}: label {value!r} is not one of 0/1, neg/pos, "
                         f"negative/positive")
    return _LABELS[key]


def load_labeled(path):
    """(texts, labels) from a CSV with ``text`` and ``label`` columns, or a JSONL file of
    ``{"text": ..., "label": ...}`` objects. Bad files raise ValueError naming the file
    and line."""
    import csv
    import json
    path = str(path)
    texts, labels = [], []
    if path.endswith(".jsonl"):
        for lineno, line in _decoded_lines(path):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                text, label = obj["text"], obj["label"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: expected a JSON object with \"text\" "
                                 f"and \"label\" ({exc})") from None
            texts.append(str(text))
            labels.append(_label(label, f"{path}:{lineno}"))
    elif path.endswith(".csv"):
        lines = (line for _, line in _decoded_lines(path))
        reader = csv.reader(lines)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file")
        columns = [h.strip().lower() for h in header]
        if "text" not in columns or "label" not in columns:
            raise ValueError(f"{path}:1: the header needs 'text' and 'label' columns, got "
                             f"{header}")
        ti, li = columns.index("text"), columns.index("label")
        for row in reader:
            if not row:
                continue
            if len(row) != len(columns):
                raise ValueError(f"{path}:{reader.line_num}: {len(row)} fields, the header "
                                 f"has {len(columns)}")
            texts.append(row[ti])
            labels.append(_label(row[li], f"{path}:{reader.line_num}"))
    else:
        raise ValueError(f"{path}: expected a .csv or .jsonl file")
    if not texts:
        raise ValueError(f"{path}: no examples in the file")
    return texts, np.array(labels, dtype=np.int64)


def load_aclimdb(root, split="train"):
    """(texts, labels) from an aclImdb folder: ``root/split/pos/*.txt`` (label 1) and
    ``root/split/neg/*.txt`` (label 0), in sorted file order."""
    import pathlib
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    texts, labels = [], []
    for name, label in (("neg", 0), ("pos", 1)):
        folder = pathlib.Path(root) / split / name
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such folder (expected aclImdb's "
                             f"{split}/pos and {split}/neg)")
        for file in sorted(folder.glob("*.txt")):
            texts.append("".join(line for _, line in _decoded_lines(file)))
            labels.append(label)
    if not texts:
        raise ValueError(f"{root}/{split}: no .txt reviews found")
    return texts, np.array(labels, dtype=np.int64)


def load_glove(path, vocab, dtype=np.float32, seed=0):
    """An embedding matrix (len(vocab), dim) from a GloVe text file, read as a stream that
    keeps only the vocabulary's words (memory bounded by the vocabulary, not the file).

    Words the file lacks get small random vectors (N(0, 0.1)); the row of ``<pad>`` (if in
    the vocabulary) is zero. Returns ``(matrix, coverage)``, coverage = the fraction of
    the vocabulary's non-special tokens found."""
    matrix = None
    found = set()
    for lineno, line in _decoded_lines(path):
        parts = line.rstrip().split(" ")
        if len(parts) < 2:
            if not line.strip():
                continue
            raise ValueError(f"{path}:{lineno}: expected a word and its vector")
        word = parts[0]
        if matrix is None:
            dim = len(parts) - 1
            rng = np.random.default_rng(seed)
            matrix = (rng.standard_normal((len(vocab), dim)) * 0.1).astype(dtype)
        if len(parts) - 1 != matrix.shape[1]:
            raise ValueError(f"{path}:{lineno}: {len(parts) - 1} numbers, earlier lines "
                             f"have {matrix.shape[1]}")
        i = vocab.stoi.get(word)
        if i is None or word in found:
            continue
        try:
            matrix[i] = np.array(parts[1:], dtype=np.float64)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: the vector of {word!r} is not numeric") from None
        found.add(word)
    if matrix is None:
        raise ValueError(f"{path}: empty file")
    if "<pad>" in vocab.stoi:
        matrix[vocab.stoi["<pad>"]] = 0
    words = [t for t in vocab.itos if t not in vocab.specials]
    coverage = len(found - set(vocab.specials)) / max(len(words), 1)
    return matrix, coverage
