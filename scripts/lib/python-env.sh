# shellcheck shell=bash
# Sourced by scripts/dev-serve and scripts/test: choose a Python that has this
# checkout installed (with the given extras), installing it on first use.
#
# The Python in use when it already imports everything; otherwise a venv in
# .venv (Debian's python3 refuses `pip install` outside a venv, PEP 668).
# Sets PY.  PYTHON=... picks the interpreter.

# ensure_python MODULES EXTRAS: e.g. ensure_python "oned_images, twisted" ".[test]"
ensure_python() {
    local modules=$1 spec=$2 base=${PYTHON:-python3}
    PY=$base
    "$PY" -c "import $modules" 2>/dev/null && return 0
    if [ -x .venv/bin/python ] && .venv/bin/python -c "import $modules" 2>/dev/null; then
        PY=.venv/bin/python
        return 0
    fi
    if "$base" -m pip install -q -e "$spec" 2>/dev/null && "$base" -c "import $modules" 2>/dev/null; then
        return 0
    fi
    echo "$(basename "$0"): installing oned-images ($spec) into .venv" >&2
    [ -x .venv/bin/python ] || "$base" -m venv .venv
    PY=.venv/bin/python
    "$PY" -m pip install -q -e "$spec"
}
