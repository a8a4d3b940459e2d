#!/usr/bin/env bash
# Issue 2's figures: a standard small CNN on Fashion-MNIST (all 60,000 training images minus a 1,000-image
# validation split), then FGSM and PGD-20 at ε = 0.1 on the full 10,000-image test set.
#   bash benchmarks/standard_model.sh [OUT_DIR (default runs/bench-standard)] [EPOCHS (default 3)]
# Prints the training summary (with seconds) and the evaluation table; writes OUT_DIR/eval.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/bench-standard}"
epochs="${2:-3}"
advlab=.venv/bin/advlab
start=$(date +%s)
$advlab train --method standard --epochs "$epochs" --out "$out" --overwrite --quiet
trained=$(date +%s)
$advlab evaluate "$out" --attack fgsm --attack pgd20 --eps 0.1 --out "$out/eval.json" --overwrite --quiet
done_=$(date +%s)
echo "training: $((trained - start)) s wall (incl. data loading and per-epoch validation); evaluation: $((done_ - trained)) s"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'), $(date -u +%F)"
