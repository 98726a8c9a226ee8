#!/usr/bin/env bash
# Create .venv (when missing) with a WORKING Python 3.12 and install rsprompt into it with uv.
#
# Candidates are tried by running them (pyenv shims named python3.12 exist on PATH but fail):
#   $RSPROMPT_PYTHON, python3.12 on PATH, pyenv's newest versions/3.12.*/bin/python,
#   then (with a notice) python3.13+ and pyenv's 3.13+, then python3 if it is >= 3.12.
# Usage: scripts/setup_venv.sh [VENV_DIR]   (default .venv)
#        scripts/setup_venv.sh --find-python   (print the Python it would use; exit 1 if none)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
STAMP="$VENV/.rsprompt-installed"
NO_PYTHON="error: rsprompt needs Python >= 3.12 (3.12 preferred) and none was found.
       Install one (e.g. 'pyenv install 3.12') or set RSPROMPT_PYTHON=/path/to/python3.12."

works() {  # works PYTHON MINOR -> 0 when PYTHON runs and is 3.MINOR
    local out
    out=$("$1" -c 'import sys, venv; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || return 1
    [ "$out" = "3.$2" ]
}

find_python() {
    local cand root minor
    if [ -n "${RSPROMPT_PYTHON:-}" ]; then
        for minor in 12 13 14; do works "$RSPROMPT_PYTHON" "$minor" && { echo "$RSPROMPT_PYTHON"; return 0; }; done
        echo "RSPROMPT_PYTHON=$RSPROMPT_PYTHON does not run as Python >= 3.12" >&2
    fi
    root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    for minor in 12 13 14; do
        if [ "$minor" != 12 ]; then
            echo "note: no working Python 3.12 found; trying 3.$minor (rsprompt is tested on 3.12)" >&2
        fi
        cand=$(command -v "python3.$minor" 2>/dev/null || true)
        if [ -n "$cand" ] && works "$cand" "$minor"; then echo "$cand"; return 0; fi
        for cand in $(ls -d "$root"/versions/3."$minor".*/bin/python 2>/dev/null | sort -rV); do
            works "$cand" "$minor" && { echo "$cand"; return 0; }
        done
    done
    cand=$(command -v python3 2>/dev/null || true)
    if [ -n "$cand" ]; then
        for minor in 12 13 14; do works "$cand" "$minor" && { echo "$cand"; return 0; }; done
    fi
    return 1
}

if [ "$VENV" = "--find-python" ]; then
    find_python || { echo "$NO_PYTHON" >&2; exit 1; }
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    if ! PY=$(find_python); then
        echo "$NO_PYTHON" >&2
        exit 1
    fi
    echo "creating $VENV with $PY ($("$PY" --version 2>&1))"
    "$PY" -m venv "$VENV"
fi

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ constraints.txt -nt "$STAMP" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check uv
    "$VENV/bin/uv" pip install -p "$VENV/bin/python" --compile-bytecode -c constraints.txt -e '.[dev]'
    touch "$STAMP"
fi
