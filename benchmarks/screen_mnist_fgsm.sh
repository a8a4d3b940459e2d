#!/usr/bin/env bash
# Issue 28's per-seed bar for `advlab train --dataset mnist --method fgsm --eps 0.3`: a quick screen of recipe
# changes. Each VARIANT trains 3 seeds (0, 1, 2) with the recipe plus FLAGS into runs/screen/VARIANT-sS (a
# finished run is reused), then evaluates PGD-50×10 at Wong et al.'s α = 0.01 on the first 1,000 MNIST test
# images (about 2 points below the full test set's figure on the recipe's seeds: BENCHMARKS.md), and prints
# one line per seed: validation accuracies at the end of training, whether the guard fired, test accuracies.
#   bash benchmarks/screen_mnist_fgsm.sh VARIANT [FLAGS...]
#   bash benchmarks/screen_mnist_fgsm.sh ramp2 --eps-warmup-epochs 2
# Needs MNIST (`.venv/bin/python benchmarks/mnist_setup.py`), found through $ADVLAB_DATA.
set -euo pipefail
cd "$(dirname "$0")/.."
export ADVLAB_DATA="${ADVLAB_DATA:-$HOME/.cache/advlab-bench}"
name=${1:?give a variant name, then its flags}
shift
for seed in 0 1 2; do
    run=runs/screen/$name-s$seed
    [[ -f $run/summary.json ]] || .venv/bin/advlab train --dataset mnist --method fgsm --eps 0.3 --seed "$seed" "$@" \
        --out "$run" --overwrite --quiet > /dev/null
    [[ -f $run/eval-n1000.json ]] || .venv/bin/advlab evaluate "$run" --attack pgd50x10 --step-ratio 1/30 --eps 0.3 \
        --n 1000 --out "$run/eval-n1000.json" --quiet > /dev/null
    .venv/bin/python - "$run" <<'PY'
import json, sys
run = sys.argv[1]
summary = json.load(open(f"{run}/summary.json"))
result = json.load(open(f"{run}/eval-n1000.json"))
robust = next(iter(result["robust_accuracy"].values()))[0]
print(
    f"{run}: val clean {100 * summary['val_clean_accuracy']:.1f}%, val PGD-10 {100 * summary['val_robust_accuracy']:.1f}%, "
    f"guard {'fired' if summary['collapses'] else 'never fired'}; test (first 1,000) clean "
    f"{100 * result['clean_accuracy']:.1f}%, PGD-50x10 {100 * robust:.1f}%; {summary['seconds']:.0f} s of training"
)
PY
done
