#!/usr/bin/env bash
# Install the peer libraries the benchmarks compare against, into advlab's venv, WITHOUT touching torch.
# Run from anywhere; assumes `bash scripts/setup.sh` already created .venv with advlab (editable) + torch 2.13.0 CPU.
# Every package goes in with --no-deps so pip can never pull torchvision or another torch.
#   torchattacks 3.5.1: declares torch, torchvision, scipy, tqdm, requests, numpy; at import time it only
#       needs torch + scipy (+tqdm/numpy, already present). torchvision is NOT imported.
#   adversarial-robustness-toolbox 1.20.1 (ART): core deps numpy, scipy, scikit-learn, six, setuptools, tqdm;
#       scikit-learn 1.9 needs joblib, threadpoolctl, narwhals; joblib 1.6 needs cloudpickle.
#   autoattack (fra31/auto-attack, the reference AutoAttack of Croce & Hein 2020): not on PyPI; from its git
#       URL at a pinned commit (needs only torch + numpy at import). Offline, install it with --no-deps from a
#       local snapshot of the repository instead: pip install --no-deps /path/to/auto-attack (its package
#       files and setup.py are enough; the examples' model weights are not needed)
set -euo pipefail
cd "$(dirname "$0")/.."
pip=.venv/bin/pip
$pip install --no-deps -c constraints.txt torchattacks==3.5.1
$pip install --no-deps -c constraints.txt adversarial-robustness-toolbox==1.20.1 \
    scipy==1.17.1 scikit-learn==1.9.1 joblib==1.6.0 threadpoolctl==3.8.0 narwhals==2.29.0 \
    cloudpickle==3.1.3 six==1.17.0
$pip install --no-deps "git+https://github.com/fra31/auto-attack@a39220048b3c9f2cca9a4d3a54604793c68eca7e" ||
    echo "could not fetch fra31/auto-attack (offline?): install it from a snapshot with pip install --no-deps PATH"
.venv/bin/python - <<'PY'
import torch, torchattacks, art
from art.estimators.classification import PyTorchClassifier  # noqa: F401
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent  # noqa: F401
print("torch", torch.__version__, "torchattacks", torchattacks.__version__, "art", art.__version__)
try:
    import torchvision  # noqa: F401
    print("WARNING: torchvision is installed")
except ImportError:
    print("torchvision absent (as intended)")
PY
