"""Data for the language models and classifiers (issue 7, first part): vocabularies, a
plain regex word tokenizer, LM batching into (T, B) streams with a validation split, and
length-bucketed batches for classification. Knows no layer."""
import re
from collections import Counter

import numpy as np

__all__ = ["tokenize", "Vocab", "train_valid_split", "lm_batches", "bucketed_batches"]

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
