#!/usr/bin/env bash
# Install advlab into ./.venv on a fresh Debian machine (idempotent: a second run is quick).
#   bash scripts/setup.sh            # library, CLI and test tools
#   bash scripts/setup.sh --test     # also Debian's chromium and chromedriver, which the report and explorer
#                                    # tests drive headless (Selenium, never a browser downloaded at run time)
# Environment:
#   ADVLAB_CONSTRAINTS  pip constraints file (default: constraints.txt, which pins the CPU torch 2.13.0;
#                       set it to /dev/null on a machine where you want pip to choose torch itself)
#   ADVLAB_VENV         where to create the virtual environment (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${ADVLAB_VENV:-.venv}
constraints=${ADVLAB_CONSTRAINTS:-constraints.txt}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "setup: need root (or sudo) to run: $*" >&2; return 1; fi; }

# System packages: a Python with venv, and the offline Fashion-MNIST files.
missing=()
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
if [ "${1:-}" = "--test" ]; then
  command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" python3-pip >/dev/null
fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# torch first, pinned, so that nothing later asks the index for a (CUDA) build of its own.
"$venv/bin/python" -c 'import torch' 2>/dev/null || "${pip[@]}" -c "$constraints" "torch==2.13.0" \
  || "${pip[@]}" -c "$constraints" torch
"${pip[@]}" -c "$constraints" -e ".[test]"
echo "setup: advlab installed in $venv ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
