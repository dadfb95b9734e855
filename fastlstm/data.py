"""Data for the language models and classifiers: vocabularies, a plain regex word
tokenizer, LM batching into (T, B) streams with a validation split, and length-bucketed
batches for classification. Knows no layer."""
import json
import math
import re
import threading
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
    """The file's lines as text, with the file and line named on bytes that are not UTF-8.
    Lines end at b"\n" only (GloVe words may hold other line-break characters); a UTF-8
    byte order mark at the start of the file is dropped."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not UTF-8 ({exc.reason} at byte "
                                 f"{exc.start})") from None
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield lineno, line


_LABELS = {"0": 0, "1": 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1}


def _label(value, where):
    """0 or 1 from a label: 0/1 (as numbers, or strings such as "1" and "1.0"),
    neg/pos or negative/positive. Booleans, null and every other value are errors."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _LABELS:
            return _LABELS[key]
        try:
            number = float(key)
        except ValueError:
            number = None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = value
    else:
        number = None
    # 1.0 and 0.0 are what a float column of 0/1 labels looks like once written out.
    if number in (0, 1):
        return int(number)
    # Values from JSON are shown as JSON (null, true), strings as strings ('maybe').
    shown = repr(value) if isinstance(value, str) else json.dumps(value)
    raise ValueError(f"{where}: label {shown} is not one of 0/1, neg/pos, "
                     f"negative/positive")


class _JSONObject(dict):
    """A decoded JSON object that remembers which of its keys were given more than once
    (json.loads would silently keep the last)."""

    def __init__(self, pairs):
        super().__init__(pairs)
        self.repeated = {k for k, n in Counter(k for k, _ in pairs).items() if n > 1}


def _json_kind(value):
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
            str: "a string", list: "an array"}.get(type(value), "an object")


def _jsonl_examples(path):
    """(lineno, text, label) of each non-blank line of a JSONL file."""
    import json
    for lineno, line in _decoded_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line, object_pairs_hook=_JSONObject)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: expected a JSON object with \"text\" and \"label\" "
                             f"(not valid JSON: {exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object with \"text\" and \"label\", "
                             f"got {_json_kind(obj)}")
        for key in ("text", "label"):
            if key not in obj:
                raise ValueError(f"{where}: expected a JSON object with \"text\" and "
                                 f"\"label\", it has no {key!r}")
            if key in obj.repeated:
                raise ValueError(f"{where}: the object gives {key!r} more than once")
        text = obj["text"]
        if not isinstance(text, str):
            raise ValueError(f"{where}: \"text\" must be a string, got {_json_kind(text)}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            # A \ud800-style escape with no partner: JSON allows it, Unicode text does not.
            raise ValueError(f"{where}: the text is not valid Unicode (a lone surrogate "
                             f"escape at character {exc.start})") from None
        yield lineno, text, _label(obj["label"], where)


# csv's field size limit is process-wide state: it is raised only while a file is parsed,
# under a lock so that two concurrent reads cannot leave each other's raised value behind.
# 2**31 - 1 is the largest limit a C long holds on every platform.
_CSV_FIELD_LIMIT = 2**31 - 1
_csv_limit_lock = threading.Lock()


def _csv_error_reason(exc):
    reason = str(exc)
    if reason == "unexpected end of data":
        return "a quoted field is never closed"
    if reason.startswith("new-line character seen in unquoted field"):
        return "a carriage return outside quotes"
    return reason


def _csv_examples(path):
    """[(lineno, text, label)] of the non-blank records of a CSV file whose header (its
    first non-blank record) names its ``text`` and ``label`` columns; lineno is the line
    a record starts on."""
    import csv
    examples = []
    # strict: without it a quote left open silently swallows the rest of the file.
    reader = csv.reader((line for _, line in _decoded_lines(path)), strict=True)
    with _csv_limit_lock:
        previous_limit = csv.field_size_limit(_CSV_FIELD_LIMIT)
        try:
            record_start = 1
            try:
                header = []
                while not header:
                    record_start = reader.line_num + 1
                    header = next(reader, None)
                    if header is None:
                        raise ValueError(f"{path}: empty file")
                columns = [h.strip().lower() for h in header]
                if columns.count("text") != 1 or columns.count("label") != 1:
                    raise ValueError(f"{path}:{record_start}: the header needs 'text' and "
                                     f"'label' columns (once each), got {header}")
                ti, li = columns.index("text"), columns.index("label")
                while True:
                    record_start = reader.line_num + 1
                    row = next(reader, None)
                    if row is None:
                        break
                    if not row:
                        continue
                    where = f"{path}:{record_start}"
                    if len(row) != len(columns):
                        raise ValueError(f"{where}: {len(row)} fields, the header has "
                                         f"{len(columns)}")
                    examples.append((record_start, row[ti], _label(row[li], where)))
            except csv.Error as exc:
                raise ValueError(f"{path}:{record_start}: malformed CSV "
                                 f"({_csv_error_reason(exc)})") from None
        finally:
            csv.field_size_limit(previous_limit)
    return examples


def load_labeled(path):
    """(texts, labels) from a CSV with ``text`` and ``label`` columns, or a JSONL file of
    ``{"text": ..., "label": ...}`` objects (blank lines skipped). Fields of any length
    are read. A label is 0/1 (1.0/0.0 too), neg/pos or negative/positive.

    Rejected, with a ValueError naming the file and line: bytes that are not UTF-8; a
    CSV without exactly one ``text`` and one ``label`` column, a record with more or
    fewer fields than the header, a quote never closed or other malformed CSV; a JSONL
    line that is not a JSON object, lacks or repeats "text" or "label", or whose text is
    not a string (null, a number, an array...) or holds a lone surrogate escape; any
    other label (null, a boolean, NaN, 2, 0.5, "maybe"...). A file with no examples is
    an error too."""
    path = str(path)
    if path.endswith(".jsonl"):
        examples = list(_jsonl_examples(path))
    elif path.endswith(".csv"):
        examples = _csv_examples(path)
    else:
        raise ValueError(f"{path}: expected a .csv or .jsonl file")
    if not examples:
        raise ValueError(f"{path}: no examples in the file")
    return ([text for _, text, _ in examples],
            np.array([label for _, _, label in examples], dtype=np.int64))


def load_aclimdb(root, split="train"):
    """(texts, labels) from an aclImdb folder: ``root/split/pos/*.txt`` (label 1) and
    ``root/split/neg/*.txt`` (label 0), in sorted file order. A review that is not UTF-8
    is a ValueError naming its file and line; so is a missing pos/ or neg/ folder, or
    no review at all."""
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


def _is_count_and_dim(parts):
    """Whether a first line is a word2vec/fastText header ("<words> <dim>")."""
    return len(parts) == 2 and all(p.isascii() and p.isdigit() for p in parts)


def _parse_vector(word, values, dtype, where):
    """``values`` (strings) as a ``dtype`` vector, or a ValueError naming the first value
    that is not a number, not finite, or too large for ``dtype``."""
    numbers = []
    for k, value in enumerate(values, 1):
        try:
            numbers.append(float(value))
        except ValueError:
            raise ValueError(f"{where}: the vector of {word!r} is not numeric (value {k} "
                             f"is {value!r})") from None
    # Cast before the finiteness check: 1e39 is finite as float64, infinite as float32.
    with np.errstate(over="ignore"):
        vector = np.array(numbers, dtype=np.float64).astype(dtype)
    finite = np.isfinite(vector)
    if not finite.all():
        k = int(np.argmin(finite))
        problem = ("a non-finite value" if not math.isfinite(numbers[k]) else
                   f"a value that overflows {np.dtype(dtype).name}")
        raise ValueError(f"{where}: the vector of {word!r} has {problem} (value {k + 1} "
                         f"is {values[k]!r})")
    return vector


def load_glove(path, vocab, dtype=np.float32, seed=0):
    """An embedding matrix (len(vocab), dim) from a GloVe text file (``word v1 ... vdim``
    per line, separated by single spaces; a word2vec/fastText "<words> <dim>" first line
    is skipped), read as a stream that keeps only the vocabulary's words (memory bounded
    by the vocabulary, not the file).

    Words the file lacks get small random vectors (N(0, 0.1)); the row of ``<pad>`` (if in
    the vocabulary) is zero. A word given more than once takes its first vector (later
    lines of it are not parsed). Returns ``(matrix, coverage)``, coverage = the fraction
    of the vocabulary's non-special tokens found.

    Rejected, with a ValueError naming the file and line: bytes that are not UTF-8; a
    line with a word and no vector; a line with more or fewer numbers than the first
    (or than the header's dim); for a vocabulary word, a value that is not a number,
    is NaN or infinite, or overflows ``dtype`` (1e39 in float32); a file with no
    vectors. The values of words outside the vocabulary are counted, not parsed."""
    matrix = None
    dim = dim_from = None
    found = set()
    for lineno, line in _decoded_lines(path):
        parts = line.rstrip().split(" ")
        if lineno == 1 and _is_count_and_dim(parts):
            dim, dim_from = int(parts[1]), "the header says"
            continue
        if len(parts) < 2:
            if not line.strip():
                continue
            raise ValueError(f"{path}:{lineno}: expected a word and its vector")
        word = parts[0]
        if dim is None:
            dim, dim_from = len(parts) - 1, "earlier lines have"
        if len(parts) - 1 != dim:
            raise ValueError(f"{path}:{lineno}: {len(parts) - 1} numbers, {dim_from} {dim}")
        if matrix is None:
            rng = np.random.default_rng(seed)
            matrix = (rng.standard_normal((len(vocab), dim)) * 0.1).astype(dtype)
        i = vocab.stoi.get(word)
        if i is None or word in found:
            continue
        matrix[i] = _parse_vector(word, parts[1:], dtype, f"{path}:{lineno}")
        found.add(word)
    if matrix is None:
        raise ValueError(f"{path}: empty file")
    if "<pad>" in vocab.stoi:
        matrix[vocab.stoi["<pad>"]] = 0
    words = [t for t in vocab.itos if t not in vocab.specials]
    coverage = len(found - set(vocab.specials)) / max(len(words), 1)
    return matrix, coverage
