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


def test_load_labeled_csv_and_jsonl(tmp_path):
    from fastlstm.data import load_labeled
    csv_file = tmp_path / "reviews.csv"
    csv_file.write_text('label,text\npos,"great, really"\n0,bad\n')
    texts, labels = load_labeled(csv_file)
    assert texts == ["great, really", "bad"] and labels.tolist() == [1, 0]
    jsonl = tmp_path / "reviews.jsonl"
    jsonl.write_text('{"text": "fine", "label": 1}\n\n{"text": "meh", "label": "negative"}\n')
    texts, labels = load_labeled(jsonl)
    assert texts == ["fine", "meh"] and labels.tolist() == [1, 0]


@pytest.mark.parametrize("name, content, message", [
    ("cols.csv", b"review,score\nx,1\n", "cols.csv:1: the header"),
    ("fields.csv", b"text,label\na,1,extra\n", "fields.csv:2: 3 fields"),
    ("label.csv", b"text,label\na,maybe\n", "label.csv:2: label 'maybe'"),
    ("empty.csv", b"", "empty.csv: empty file"),
    ("bytes.csv", b"text,label\n\xff\xfe,1\n", "bytes.csv:2: not UTF-8"),
    ("bad.jsonl", b'{"text": "a", "label": 1}\n{"text": "b"}\n', "bad.jsonl:2: expected"),
    ("none.jsonl", b"\n\n", "none.jsonl: no examples"),
    ("data.txt", b"x", "expected a .csv or .jsonl"),
])
def test_load_labeled_rejects_bad_files(tmp_path, name, content, message):
    from fastlstm.data import load_labeled
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_labeled(path)
    assert message in str(info.value)


def test_load_aclimdb(tmp_path):
    from fastlstm.data import load_aclimdb
    for split, name, texts in (("train", "pos", ["good"]), ("train", "neg", ["bad", "awful"])):
        folder = tmp_path / split / name
        folder.mkdir(parents=True)
        for i, t in enumerate(texts):
            (folder / f"{i}_7.txt").write_text(t)
    texts, labels = load_aclimdb(tmp_path, "train")
    assert texts == ["bad", "awful", "good"] and labels.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="test/neg"):
        load_aclimdb(tmp_path, "test")


def test_load_glove_streams_only_the_vocabulary(tmp_path):
    from fastlstm.data import load_glove
    glove = tmp_path / "glove.txt"
    glove.write_text("the 1 2 3\ncat 4 5 6\nzebra 7 8 9\n")
    vocab = Vocab(["the", "cat", "dog"], specials=("<pad>", "<unk>"))
    matrix, coverage = load_glove(glove, vocab)
    assert matrix.shape == (5, 3) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[vocab.stoi["cat"]], [4, 5, 6])
    assert not np.any(matrix[0]) and abs(coverage - 2 / 3) < 1e-12
    bad = tmp_path / "bad.txt"
    bad.write_text("the 1 2 3\ncat 4 5\n")
    with pytest.raises(ValueError, match="bad.txt:2: 2 numbers"):
        load_glove(bad, vocab)
