"""fastlstm.data: tokenizer, vocabularies, LM streams and bucketed batches."""
import json

import numpy as np
import pytest

from fastlstm.data import Vocab, bucketed_batches, lm_batches, tokenize, train_valid_split


def test_tokenize():
    assert tokenize("Don't stop -- it's 42!") == ["don't", "stop", "-", "-", "it's", "42", "!"]
    assert tokenize("Hello, World", lower=False) == ["Hello", ",", "World"]


def test_word_vocab_cutoffs_unknown_and_round_trip():
    docs = [tokenize("the cat sat on the mat"), tokenize("the dog sat")]
    v = Vocab.build(docs, min_freq=2, specials=("<unk>", "<s>", "</s>"))
    assert v.itos == ["<unk>", "<s>", "</s>", "the", "sat"]
    np.testing.assert_array_equal(v.encode(["the", "zebra", "sat"]), [3, 0, 4])
    assert v.decode([3, 4], sep=" ") == "the sat"
    small = Vocab.build(docs, max_size=3)
    assert len(small) == 3 and small.itos[1:] == ["the", "sat"]
    again = Vocab.from_dict(json.loads(json.dumps(v.to_dict())))
    assert again.itos == v.itos and again.unk == 0


def test_char_vocab():
    v = Vocab.characters("abcab")
    assert v.itos == ["<unk>", "a", "b", "c"]
    assert v.decode(v.encode("cab?")) == "cab<unk>"
    strict = Vocab.characters("ab", unk=None)
    with pytest.raises(KeyError, match="'z'"):
        strict.encode("az")


def test_lm_batches_carry_streams_and_shift_targets():
    ids = np.arange(43)
    train, valid = train_valid_split(ids, 0.1)
    assert len(valid) == 4 and train[-1] + 1 == valid[0]
    batches = list(lm_batches(train, T=4, B=3))
    stream_len = (len(train) - 1) // 3
    assert sum(x.shape[0] for x, _ in batches) == stream_len
    for x, y in batches:
        np.testing.assert_array_equal(y, x + 1)      # ids are consecutive here
    # chunk k+1 continues chunk k in every stream
    for (x0, _), (x1, _) in zip(batches, batches[1:]):
        np.testing.assert_array_equal(x1[0], x0[-1] + 1)
    with pytest.raises(ValueError, match="too few"):
        next(lm_batches([1, 2], T=4, B=3))


def test_bucketed_batches_pad_and_cover_everything():
    seqs = [[1] * n for n in (5, 1, 3, 8, 2, 7, 0)]
    seen = []
    for ids, lengths, index in bucketed_batches(seqs, 3, pad_id=9, seed=0):
        assert ids.shape == (max(lengths.max(), 1), len(index))
        for col, i in enumerate(index):
            assert lengths[col] == len(seqs[i])
            assert np.all(ids[:lengths[col], col] == 1) and np.all(ids[lengths[col]:, col] == 9)
        seen.extend(index.tolist())
    assert sorted(seen) == list(range(len(seqs)))
