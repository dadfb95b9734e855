"""The README's functional-API example runs as printed."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.skipif(not README.exists(), reason="README.md is not beside the tests")
def test_readme_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "(100, 400) (25, 32, 65)"


@pytest.mark.skipif(not README.exists(), reason="README.md is not beside the tests")
def test_readme_training_example_learns(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    train = next(b for b in blocks if "optim.Adam" in b)
    exec(compile(train, "README.md", "exec"), {})
    out = capsys.readouterr().out
    loss, uniform = (float(v) for v in re.findall(r"([\d.]+)", out)[:2])
    assert loss < 0.8 * uniform, out          # it learned something
    assert (tmp_path / "lstm.npz").exists()
    import fastlstm
    ck = fastlstm.load(tmp_path / "lstm.npz")
    assert list(ck.model) == ["embed", "lstm", "head"]
    rebuilt = [p for m in ck.model.values() for p in m.parameters()]
    assert [id(p) for p in ck.optimizer.params] == [id(p) for p in rebuilt]


@pytest.mark.skipif(not README.exists(), reason="README.md is not beside the tests")
def test_readme_bidirectional_example_prints_its_shapes(capsys):
    import numpy as np
    from fastlstm import nn
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    block = next(b for b in blocks if "bidirectional=True" in b)
    exec(compile(block, "README.md", "exec"), {"np": np, "nn": nn, "T": 32, "B": 16, "H": 64})
    printed = capsys.readouterr().out.strip()
    assert printed == re.search(r"print\(.*\)\s+# (.*)", block).group(1).strip()
