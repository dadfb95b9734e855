"""An installation whose compiled extensions cannot be imported (a broken build, a wheel
for another platform) is never silently replaced by the reference.

Each test starts a fresh interpreter in which importing ``fastlstm._lstm``,
``fastlstm._rnn`` and ``fastlstm._dense`` fails, as it does when the .so files are missing,
and checks what a user sees: ``backend="cython"`` raises an ImportError that names the
extension, ``backend="auto"`` warns once and then gives the reference's answer,
``show_config()`` and ``--version`` say the kernels are not compiled, and the models still
train (on NumPy) to the same numbers as the compiled build.
"""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastlstm

BLOCK_EXTENSIONS = textwrap.dedent("""
    import importlib.abc, sys

    class _NoExtensions(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in ("fastlstm._lstm", "fastlstm._rnn", "fastlstm._dense"):
                raise ImportError(f"No module named {name!r} (removed for the test)")
            return None

    sys.meta_path.insert(0, _NoExtensions())
""")


def run_without_extensions(body, **variables):
    """Run ``body`` in a fresh interpreter that cannot import the compiled extensions,
    with ``variables`` added to the environment; return the CompletedProcess (stdout,
    stderr as text)."""
    env = dict(os.environ, **variables)
    package_parent = str(pathlib.Path(fastlstm.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH"))
                                        if p)
    script = BLOCK_EXTENSIONS + textwrap.dedent(body)
    # cwd: `python -c` puts the working directory first on sys.path, and from a source
    # checkout that would import its unbuilt sources instead of the package under test
    return subprocess.run([sys.executable, "-c", script], env=env, text=True,
                          capture_output=True, timeout=120, cwd=package_parent)


def test_cython_backend_raises_naming_the_extension():
    proc = run_without_extensions("""
        import numpy as np, fastlstm
        x = np.zeros((3, 2, 4)); W_x = np.zeros((4, 20)); W_h = np.zeros((5, 20))
        b = np.zeros(20)
        for call in (lambda: fastlstm.lstm_forward(x, W_x, W_h, b, backend="cython"),
                     lambda: fastlstm.rnn_forward(x, W_x[:, :5], W_h[:, :5], b[:5],
                                                  backend="cython")):
            try:
                call()
            except ImportError as exc:
                print("ImportError:", exc)
            else:
                print("no error")
    """)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout
    for line in lines:
        assert line.startswith("ImportError:"), line
        assert "fastlstm._lstm" in line and "removed for the test" in line


def test_auto_backend_warns_once_and_gives_the_reference_answer():
    proc = run_without_extensions("""
        import json, warnings
        import numpy as np, fastlstm
        rng = np.random.default_rng(0)
        x = rng.standard_normal((5, 3, 4)); W_x = rng.standard_normal((4, 24)) * 0.3
        W_h = rng.standard_normal((6, 24)) * 0.3; b = rng.standard_normal(24) * 0.1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outs = [fastlstm.lstm_forward(x, W_x, W_h, b)[0] for _ in range(3)]
            outs.append(fastlstm.rnn_forward(x, W_x[:, :6], W_h[:, :6], b[:6])[0])
        runtime = [str(w.message) for w in caught if w.category is RuntimeWarning]
        print(json.dumps({"warnings": runtime, "backend": fastlstm.lstm_forward(x, W_x, W_h,
                                                                              b)[2].backend,
                          "lstm": outs[0].tolist(), "rnn": outs[3].tolist()}))
    """)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["warnings"]) == 1, result["warnings"]
    assert "reference" in result["warnings"][0] and "fastlstm._lstm" in result["warnings"][0]
    assert result["backend"] == "numpy"

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4)); W_x = rng.standard_normal((4, 24)) * 0.3
    W_h = rng.standard_normal((6, 24)) * 0.3; b = rng.standard_normal(24) * 0.1
    np.testing.assert_array_equal(
        result["lstm"], fastlstm.lstm_forward(x, W_x, W_h, b, backend="numpy")[0])
    np.testing.assert_array_equal(
        result["rnn"], fastlstm.rnn_forward(x, W_x[:, :6], W_h[:, :6], b[:6],
                                            backend="numpy")[0])


def test_show_config_and_version_say_not_compiled():
    proc = run_without_extensions("""
        import fastlstm
        fastlstm.show_config()
        print("compiled =", fastlstm.config()["compiled"])
        import sys, runpy
        sys.argv = ["fastlstm", "--version"]
        runpy.run_module("fastlstm", run_name="__main__")
    """)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "compiled kernels: NO, using the NumPy reference" in out, out
    assert "fastlstm._lstm" in out
    assert "OpenMP: no" in out
    assert "compiled = False" in out
    version_line = out.strip().splitlines()[-1]
    assert version_line.startswith(f"fastlstm {fastlstm.__version__} (NumPy reference only")


CHAR_STEP = """
    import json, warnings
    import numpy as np
    from fastlstm.models import CharLM
    from fastlstm.nn.functional import cross_entropy
    from fastlstm.optim import Adagrad
    warnings.simplefilter("ignore", RuntimeWarning)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 11, size=(7, 4))
    targets = rng.integers(0, 11, size=(7, 4))
    model = CharLM(11, hidden_size=9, embedding_dim=5, dtype=np.float64, seed=3)
    opt = Adagrad(model.parameters(), lr=0.1)
    losses = []
    for _ in range(3):
        logits, _ = model(ids)
        loss, dlogits = cross_entropy(logits, targets)
        model.zero_grad()
        model.backward(dlogits)
        opt.step()
        losses.append(float(loss))
    print(json.dumps(losses))
"""


def test_models_train_on_numpy_to_the_compiled_numbers():
    if not fastlstm.config()["compiled"]:
        pytest.skip("this process has no compiled kernels to compare with")
    proc = run_without_extensions(CHAR_STEP)
    assert proc.returncode == 0, proc.stderr
    without = json.loads(proc.stdout)
    namespace = {}
    exec(textwrap.dedent(CHAR_STEP).replace("print(json.dumps(losses))", ""), namespace)
    compiled = namespace["losses"]
    assert without[-1] < without[0]
    np.testing.assert_allclose(without, compiled, rtol=1e-10)


@pytest.mark.parametrize("value, ok", [("avx512", True), ("avx2", True), ("generic", True),
                                       ("avx3", False)])
def test_isa_variable_without_compiled_kernels(value, ok):
    """Without the extensions there is no level to force: a known FASTLSTM_ISA is
    accepted (the reference runs), a misspelt one is still an error naming it."""
    proc = run_without_extensions("import fastlstm; print(fastlstm.config()['isa'])",
                                  FASTLSTM_ISA=value)
    if ok:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "generic"
    else:
        assert proc.returncode != 0
        assert "FASTLSTM_ISA" in proc.stderr.strip().splitlines()[-1]
