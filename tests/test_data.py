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


# --- bad input: every rejection names the file and the (1-based) line ---------------------

def _raises_at(path, line, message, load):
    with pytest.raises(ValueError) as info:
        load(path)
    text = str(info.value)
    assert text.startswith(f"{path}:{line}: "), text
    assert message in text, text


@pytest.mark.parametrize("name, content, line, message", [
    # CSV
    ("missing.csv", b"text,label\na,1\nb\n", 3, "1 fields, the header has 2"),
    ("label_word.csv", b"text,label\na,1\nb,yes\n", 3, "label 'yes' is not one of"),
    ("label_empty.csv", b"text,label\na,\n", 2, "label '' is not one of"),
    ("label_half.csv", b"text,label\na,0.5\n", 2, "label '0.5' is not one of"),
    ("label_two.csv", b"text,label\na,2\n", 2, "label '2' is not one of"),
    ("label_nan.csv", b"text,label\na,nan\n", 2, "label 'nan' is not one of"),
    ("label_inf.csv", b"text,label\na,inf\n", 2, "label 'inf' is not one of"),
    ("label_bool.csv", b"text,label\na,True\n", 2, "label 'True' is not one of"),
    ("open_quote.csv", b"label,text\n1,ok\n1,\"never closed\n0,swallowed\n", 3,
     "malformed CSV (a quoted field is never closed)"),
    ("stray_quote.csv", b"text,label\n\"a\"b,1\n", 2, "malformed CSV"),
    ("bare_cr.csv", b"text,label\na\rb,1\n", 2, "a carriage return outside quotes"),
    ("twice.csv", b"text,text,label\na,b,1\n", 1, "'text' and 'label' columns (once each)"),
    ("late_header.csv", b"\n\nreview,label\n", 3, "the header needs 'text' and 'label'"),
    ("multiline.csv", b"text,label\n\"two\nlines\",1\n\"x\ny\",maybe\n", 4, "label 'maybe'"),
    ("bytes_late.csv", b"text,label\na,1\n\"b\n\xc3\x28\",1\n", 4, "not UTF-8"),
    # JSONL
    ("text_null.jsonl", b'{"text": "a", "label": 1}\n{"text": null, "label": 1}\n', 2,
     '"text" must be a string, got null'),
    ("text_missing.jsonl", b'{"label": 1}\n', 1, "it has no 'text'"),
    ("text_number.jsonl", b'{"text": 5, "label": 1}\n', 1,
     '"text" must be a string, got a number'),
    ("text_list.jsonl", b'{"text": ["a"], "label": 1}\n', 1,
     '"text" must be a string, got an array'),
    ("text_object.jsonl", b'{"text": {"a": 1}, "label": 1}\n', 1,
     '"text" must be a string, got an object'),
    ("text_bool.jsonl", b'{"text": false, "label": 1}\n', 1,
     '"text" must be a string, got a boolean'),
    ("text_twice.jsonl", b'{"text": "a", "label": 1, "text": null}\n', 1,
     "gives 'text' more than once"),
    ("surrogate.jsonl", b'{"text": "a\\ud800b", "label": 1}\n', 1, "lone surrogate"),
    ("label_null.jsonl", b'{"text": "a", "label": null}\n', 1, "label null is not one of"),
    ("label_missing.jsonl", b'\n{"text": "a"}\n', 2, "it has no 'label'"),
    ("label_true.jsonl", b'{"text": "a", "label": true}\n', 1, "label true is not one of"),
    ("label_false.jsonl", b'{"text": "a", "label": false}\n', 1, "label false is not one of"),
    ("label_nan.jsonl", b'{"text": "a", "label": NaN}\n', 1, "label NaN is not one of"),
    ("label_half.jsonl", b'{"text": "a", "label": 0.5}\n', 1, "label 0.5 is not one of"),
    ("label_list.jsonl", b'{"text": "a", "label": [1]}\n', 1, "label [1] is not one of"),
    ("array.jsonl", b'{"text": "a", "label": 1}\n[1, 2]\n', 2, "got an array"),
    ("string.jsonl", b'"just text"\n', 1, "got a string"),
    ("null.jsonl", b"null\n", 1, "got null"),
    ("broken.jsonl", b'{"text": "a", "label": 1}\n\n{"text": "b", \n', 3, "not valid JSON"),
    ("trailing.jsonl", b'{"text": "a", "label": 1} x\n', 1, "not valid JSON: Extra data"),
    ("bytes.jsonl", b'{"text": "a", "label": 1}\n{"text": "\xff", "label": 1}\n', 2,
     "not UTF-8"),
])
def test_load_labeled_names_file_and_line(tmp_path, name, content, line, message):
    from fastlstm.data import load_labeled
    path = tmp_path / name
    path.write_bytes(content)
    _raises_at(path, line, message, load_labeled)


def test_load_labeled_reads_awkward_valid_files(tmp_path):
    from fastlstm.data import load_labeled
    csv_file = tmp_path / "excel.csv"
    # A byte order mark, CRLF line ends, blank lines, float labels, a quoted line break.
    csv_file.write_bytes(b'\xef\xbb\xbf\r\nText,Label\r\n"two\r\nlines",1.0\r\n\r\n'
                         b'"say ""hi""",0.0\r\nplain, 1 \r\n')
    texts, labels = load_labeled(csv_file)
    assert texts == ["two\r\nlines", 'say "hi"', "plain"] and labels.tolist() == [1, 0, 1]
    jsonl = tmp_path / "excel.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"text": "\\ud83d\\ude00", "label": 1.0}\n  \n'
                      b'{"text": "", "label": "0", "meta": {"text": 1, "text": 2}}\n')
    texts, labels = load_labeled(jsonl)
    assert texts == ["\U0001F600", ""] and labels.tolist() == [1, 0]


def test_load_labeled_csv_field_of_300000_characters_round_trips(tmp_path):
    import csv
    from fastlstm.data import load_labeled
    rng = np.random.default_rng(0)
    alphabet = list('abc ,"\n\r\t\'é–😀')
    review = "".join(rng.choice(alphabet, size=300_000))
    path = tmp_path / "long.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerows([["label", "text"], [1, "short"], [0, review], [1, "after"]])
    texts, labels = load_labeled(path)
    assert len(texts[1]) == 300_000 and texts[1] == review
    assert texts[0] == "short" and texts[2] == "after" and labels.tolist() == [1, 0, 1]


def test_load_labeled_leaves_the_csv_field_size_limit_alone(tmp_path):
    import csv
    from fastlstm.data import load_labeled
    good = tmp_path / "good.csv"
    good.write_text("text,label\n" + "x" * 5000 + ",1\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\n\"open,1\n")
    previous = csv.field_size_limit(1000)
    try:
        assert load_labeled(good)[0] == ["x" * 5000]
        assert csv.field_size_limit() == 1000
        with pytest.raises(ValueError, match="never closed"):
            load_labeled(bad)
        assert csv.field_size_limit() == 1000
    finally:
        csv.field_size_limit(previous)


@pytest.mark.parametrize("content, line, message, dtype", [
    (b"the nan 1\n", 1, "'the' has a non-finite value (value 1 is 'nan')", np.float32),
    (b"cat 1 2\nthe 1 inf\n", 2, "non-finite value (value 2 is 'inf')", np.float32),
    (b"the -Infinity 1\n", 1, "non-finite value (value 1 is '-Infinity')", np.float32),
    (b"cat 1 2\n\nthe 1e39 1\n", 3, "overflows float32 (value 1 is '1e39')", np.float32),
    (b"the -1e39 1\n", 1, "overflows float32", np.float32),
    (b"the 1 1e309\n", 1, "non-finite value (value 2 is '1e309')", np.float64),
    (b"the 1 70000\n", 1, "overflows float16", np.float16),
    (b"the 1 x\n", 1, "'the' is not numeric (value 2 is 'x')", np.float32),
    (b"the  1 2\n", 1, "is not numeric (value 1 is '')", np.float32),
    (b"the 1 2\ncat 1 2 3\n", 2, "3 numbers, earlier lines have 2", np.float32),
    (b"zebra 1 2\nyak 1\n", 2, "1 numbers, earlier lines have 2", np.float32),
    (b"the\n", 1, "expected a word and its vector", np.float32),
    (b"the 1 2\ncat \n", 2, "expected a word and its vector", np.float32),
    (b"the\t1\t2\n", 1, "expected a word and its vector", np.float32),
    (b"2 3\nthe 1 2\n", 2, "2 numbers, the header says 3", np.float32),
    (b"the 1 2\n\xe9t\xe9 1 2\n", 2, "not UTF-8", np.float32),
])
def test_load_glove_names_file_and_line(tmp_path, content, line, message, dtype):
    from fastlstm.data import load_glove
    path = tmp_path / "vectors.txt"
    path.write_bytes(content)
    vocab = Vocab(["the", "cat"], specials=("<unk>",))
    _raises_at(path, line, message, lambda p: load_glove(p, vocab, dtype=dtype))


@pytest.mark.parametrize("content", [b"", b"\n\n", b"4 2\n"])
def test_load_glove_rejects_files_without_vectors(tmp_path, content):
    from fastlstm.data import load_glove
    path = tmp_path / "vectors.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path}: empty file"):
        load_glove(path, Vocab(["the"]))


def test_load_glove_first_vector_wins_and_other_words_are_not_parsed(tmp_path):
    from fastlstm.data import load_glove
    path = tmp_path / "vectors.txt"
    # A fastText-style header, a duplicate word, and garbage values of a word the
    # vocabulary lacks; 1e39 is fine in float64.
    path.write_bytes(b"\xef\xbb\xbf4 2\nthe 1 2\nzebra nan x\nthe 3 4\ncat 1e39 -1e-50\n")
    vocab = Vocab(["the", "cat", "dog"], specials=("<unk>",))
    matrix, coverage = load_glove(path, vocab, dtype=np.float64)
    np.testing.assert_array_equal(matrix[vocab.stoi["the"]], [1, 2])
    np.testing.assert_array_equal(matrix[vocab.stoi["cat"]], [1e39, -1e-50])
    assert matrix.dtype == np.float64 and np.isfinite(matrix).all()
    assert abs(coverage - 2 / 3) < 1e-12


def test_load_aclimdb_names_a_review_that_is_not_utf8(tmp_path):
    from fastlstm.data import load_aclimdb
    for name in ("pos", "neg"):
        (tmp_path / "train" / name).mkdir(parents=True)
        (tmp_path / "train" / name / "0_5.txt").write_bytes(b"\xef\xbb\xbffine\n")
    bad = tmp_path / "train" / "pos" / "1_9.txt"
    bad.write_bytes(b"good\nbut \xe9\n")        # Latin-1, not UTF-8
    _raises_at(bad, 2, "not UTF-8", lambda p: load_aclimdb(tmp_path, "train"))
    bad.write_bytes("good\nbut \u00e9\n".encode())
    texts, labels = load_aclimdb(tmp_path, "train")
    assert texts == ["fine\n", "fine\n", "good\nbut \u00e9\n"] and labels.tolist() == [0, 1, 1]
