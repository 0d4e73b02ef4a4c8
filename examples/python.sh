# Sourced by the example scripts (after they set ROOT, the repository): PYTHON, the project's Python,
# found without activating anything: $PYTHON when set, else the .venv that setup.sh makes, else the
# conda env `aft`, else the python3 on the PATH, the first that imports the project's packages.
find_python() {
    for candidate in "${PYTHON:-}" "$ROOT/.venv/bin/python" \
            "$(command -v conda >/dev/null 2>&1 && conda info --base 2>/dev/null)/envs/aft/bin/python" python3 python; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 &&
                "$candidate" -c "import absl, torch" >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}
PYTHON=$(find_python) || {
    echo "error: no Python here has the project's packages: run sh $ROOT/setup.sh first (it makes $ROOT/.venv), or set PYTHON" >&2
    exit 2
}
