#!/usr/bin/env bash
# Issue 3's method table: every training method on the same budget of 3 passes over Fashion-MNIST
# (59,000 images; free AT: 3 passes of m = 4 replays), small_cnn, Adam + one-cycle, ε = 0.1; then clean and
# PGD-50×10 accuracy at ε = 0.1 on the first N test images (default: all 10,000).
#   bash benchmarks/methods_table.sh [N] [OUT_DIR (default runs/methods)] [METHOD ...]
# Prints one row per method: clean, robust, training minutes; results in OUT_DIR/NAME/eval-pgd50x10-nN.json
# (and with APGD=1 also APGD-CE-100 on the same images, OUT_DIR/NAME/eval-apgd-ce-nN.json, a column more).
# A finished training run (OUT_DIR/NAME/summary.json) and a finished evaluation are reused, so the script
# can be stopped and rerun; RETRAIN=1 trains again. METHOD names pick a subset of the rows.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000}"
out="${2:-runs/methods}"
shift $(( $# < 2 ? $# : 2 ))
only=" $* "
advlab=.venv/bin/advlab
declare -a runs=(
    "standard --method standard"
    "fgsm --method fgsm"
    "nfgsm --method nfgsm"
    "gradalign --method gradalign"
    "pgd --method pgd --steps 3"
    "trades-b1 --method trades --steps 3 --beta 1"
    "trades-b6 --method trades --steps 3 --beta 6"
    "mart --method mart --steps 3 --beta 6"
    "free --method free --replays 4 --epochs 12"
    "gradreg --method gradreg --lam 1"
)
names=()
for spec in "${runs[@]}"; do
    read -r name args <<<"$spec"
    [[ "$only" == "  " || "$only" == *" $name "* ]] || continue
    names+=("$name")
    [[ "$args" == *--epochs* ]] || args="$args --epochs 3"
    if [[ "${RETRAIN:-0}" == 1 || ! -f "$out/$name/summary.json" ]]; then
        # shellcheck disable=SC2086
        $advlab train $args --eps 0.1 --out "$out/$name" --overwrite --quiet >/dev/null
        # An interrupted evaluation's resume state belongs to the old weights: it would be refused.
        rm -f "$out/$name"/eval-{pgd50x10,apgd-ce}-n*.json{,.state.safetensors}
    fi
    [[ -f "$out/$name/eval-pgd50x10-n$n.json" ]] ||
        $advlab evaluate "$out/$name" --attack pgd50x10 --eps 0.1 --n "$n" --out "$out/$name/eval-pgd50x10-n$n.json" \
            --quiet >/dev/null
    [[ "${APGD:-0}" != 1 || -f "$out/$name/eval-apgd-ce-n$n.json" ]] ||
        $advlab evaluate "$out/$name" --attack apgd-ce --eps 0.1 --n "$n" --out "$out/$name/eval-apgd-ce-n$n.json" \
            --quiet >/dev/null
done
.venv/bin/python - "$out" "$n" "${names[@]}" <<'PY'
import json, sys
from pathlib import Path
out, n = Path(sys.argv[1]), sys.argv[2]
import statistics
apgd = any((out / name / f"eval-apgd-ce-n{n}.json").is_file() for name in sys.argv[3:])
print("| method | clean | PGD-50×10, ε = 0.1 |" + (" APGD-CE-100 |" if apgd else "")
      + " training minutes | epoch (× standard) | best epoch | eval images |")
print("|---|---|---|" + ("---|" if apgd else "") + "---|---|---|---|")
def epoch_seconds(name):  # median seconds of a pass over the training data (free: of one pass of m replays)
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["seconds"] for r in rows), sum(r["seconds"] for r in rows)
standard = epoch_seconds("standard")[0] if (out / "standard" / "metrics.jsonl").is_file() else None
for name in sys.argv[3:]:
    summary = json.loads((out / name / "summary.json").read_text())
    median, total = epoch_seconds(name)  # training passes only, not the per-epoch validation
    ratio = f"{median:.1f} s ({median / standard:.1f}×)" if standard else f"{median:.1f} s"
    ev = json.loads((out / name / f"eval-pgd50x10-n{n}.json").read_text())
    extra = ""
    if apgd:
        path = out / name / f"eval-apgd-ce-n{n}.json"
        extra = f" {100 * json.loads(path.read_text())['worst_case_accuracy'][0]:.2f}% |" if path.is_file() else " — |"
    print(f"| {name} | {100 * ev['clean_accuracy']:.2f}% | {100 * ev['worst_case_accuracy'][0]:.2f}% |{extra} "
          f"{total / 60:.1f} | {ratio} | {summary['best_epoch']} | {ev['n']} |")
PY
