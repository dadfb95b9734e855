"""FASTLSTM_ISA and fastlstm._isa: one instruction-set level for every compiled kernel,
chosen at import (the CPU's best, or the variable), changed only as a whole, and an
impossible request refused by name rather than silently replaced."""
import subprocess
import sys

import pytest

import fastlstm
from fastlstm import _backend, _isa

from conftest import TESTS_DIR, child_env

pytestmark = pytest.mark.skipif(not _backend.compiled_available(),
                                reason="the compiled kernels are not built")

EXTENSIONS = ["fastlstm._lstm", "fastlstm._rnn", "fastlstm._dense", "fastlstm._gru",
              "fastlstm._lstmp"]


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=TESTS_DIR, env=child_env(**env), timeout=120)


def levels_code():
    return ("import fastlstm, json; from fastlstm import _lstm, _rnn, _dense, _gru, _runtime; "
            "print(json.dumps([fastlstm.config()['isa'], _runtime.isa_level(), "
            "sorted(_runtime.isa_readers()), _lstm.packed_gemm_available()]))")


@pytest.mark.parametrize("name", ["generic", "avx2", "avx512"])
def test_environment_variable_sets_every_extension(name):
    if _isa.LEVELS[name] > _isa.LEVELS[_isa.best()]:
        pytest.skip(f"this CPU cannot run {name}")
    proc = run_python(levels_code(), FASTLSTM_ISA=name.upper())
    assert proc.returncode == 0, proc.stderr
    import json
    isa, level, readers, packed = json.loads(proc.stdout)
    assert isa == name
    assert level == _isa.LEVELS[name]
    assert readers == sorted(EXTENSIONS)    # every extension's kernels read that level
    assert packed == (name != "generic")


def test_unset_means_the_best_the_cpu_has():
    proc = run_python(levels_code(), FASTLSTM_ISA="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f'["{_isa.best()}"')


@pytest.mark.parametrize("value", ["avx", "sse2", "neon", "3"])
def test_unknown_value_is_an_error_naming_the_variable(value):
    proc = run_python("import fastlstm", FASTLSTM_ISA=value)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError") and "FASTLSTM_ISA" in last and value in last, last


def test_level_above_the_cpu_is_an_error_naming_the_variable():
    above = [n for n, level in _isa.LEVELS.items() if level > _isa.LEVELS[_isa.best()]]
    if not above:
        pytest.skip("this CPU runs every level")
    proc = run_python("import fastlstm", FASTLSTM_ISA=above[0])
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "FASTLSTM_ISA" in last and above[0] in last and "cannot run" in last, last


def test_set_isa_changes_all_extensions_together_and_restores():
    from fastlstm import _dense, _gru, _lstm, _lstmp, _rnn, _runtime
    assert sorted(_runtime.isa_readers()) == sorted(m.__name__ for m in (_lstm, _rnn, _dense,
                                                                         _gru, _lstmp))
    before = _isa.current()
    with _isa.isa("generic"):
        assert _runtime.isa_level() == 0
        assert not _lstm.packed_gemm_available()
        assert fastlstm.config()["isa"] == "generic"
    assert _isa.current() == before
    assert _runtime.isa_level() == _isa.LEVELS[before]
    with pytest.raises(ValueError, match="isa"):
        _isa.set_isa("fastest")
    assert _isa.current() == before


def test_show_config_says_what_runs(capsys):
    fastlstm.show_config()
    out = capsys.readouterr().out
    assert f"instruction set: {_isa.current()}" in out
    assert f"best here: {_isa.best()}" in out
    assert "CPU: " in out


def test_command_line_config_prints_the_level():
    proc = run_python("from fastlstm.__main__ import main; main(['config'])",
                      FASTLSTM_ISA="generic")
    assert proc.returncode == 0, proc.stderr
    assert "instruction set: generic" in proc.stdout
    assert "forced by FASTLSTM_ISA=generic" in proc.stdout
