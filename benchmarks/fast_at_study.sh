#!/usr/bin/env bash
# Issue 12's study: does the default fast method hold on Fashion-MNIST at large budgets?
# For each ε and seed: the fast method with its recipe (`advlab train --method M --eps E --seed S`, nothing
# else), and PGD-10 AT trained for the same number of epochs; then PGD-50×10 at that ε on all 10,000
# test images (the best epoch's weights). Prints one row per run (clean, PGD-50×10, median epoch seconds,
# whether the guard saw a collapse) and each fast run's robust accuracy as a share of PGD-10's.
#   bash benchmarks/fast_at_study.sh [EPS_LIST (0.2 0.3)] [SEEDS (0 1 2)] [PGD_SEEDS (0)] [FAST (fgsm)] [TAG FLAGS...]
#   e.g. bash benchmarks/fast_at_study.sh "0.3" "0 1 2" " "     (a blank list: no PGD-10 reference run)
#   e.g. bash benchmarks/fast_at_study.sh "0.2" "0 1 2" " " fgsm unclipped --clip-start no   (runs named fgsm-unclipped-…)
# FAST defaults to fgsm: with the Fashion-MNIST recipe's ε ramp it held at ε = 0.2 with 57% validation PGD-10
# against N-FGSM's 51% (the fast-AT grid in BENCHMARKS.md).
# Runs go to runs/fast-at/; a finished run and a finished evaluation are reused (RETRAIN=1 trains again).
set -euo pipefail
cd "$(dirname "$0")/.."
eps_list="${1:-0.2 0.3}"
seeds="${2:-0 1 2}"
pgd_seeds="${3:-0}"
fast="${4:-fgsm}"
tag="${5:+-$5}"
extra=("${@:6}")
out=runs/fast-at
advlab=.venv/bin/advlab
names=()
run() {  # run NAME EPS ARGS...: train (unless done) and evaluate with PGD-50×10
    local name=$1 eps=$2
    shift 2
    names+=("$name")
    if [[ "${RETRAIN:-0}" == 1 || ! -f "$out/$name/summary.json" ]]; then
        $advlab train "$@" --eps "$eps" --out "$out/$name" --overwrite --quiet >/dev/null  # a guard's stop exits 0
        rm -f "$out/$name/eval-pgd50x10.json"
    fi
    if [[ ! -f "$out/$name/eval-pgd50x10.json" && -f "$out/$name/model.safetensors" ]]; then
        $advlab evaluate "$out/$name" --attack pgd50x10 --eps "$eps" --out "$out/$name/eval-pgd50x10.json" --quiet >/dev/null
    fi
}
for eps in $eps_list; do
    for seed in $seeds; do run "$fast$tag-eps$eps-s$seed" "$eps" --method "$fast" --seed "$seed" "${extra[@]}"; done
    for seed in $pgd_seeds; do run "pgd10-eps$eps-s$seed" "$eps" --method pgd --steps 10 --seed "$seed"; done
done
.venv/bin/python - "$out" "${names[@]}" <<'PY'
import json, statistics, sys
from pathlib import Path
out, names = Path(sys.argv[1]), sys.argv[2:]
rows = {}
print("| run | method | ε | seed | start clipped | clean | PGD-50×10 | median epoch s | epochs | best epoch | collapsed "
      "| final method |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for name in names:
    folder = out / name
    summary = json.loads((folder / "summary.json").read_text())
    config = json.loads((folder / "config.json").read_text())["config"]
    epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    ev_path = folder / "eval-pgd50x10.json"
    ev = json.loads(ev_path.read_text()) if ev_path.is_file() else None
    collapsed = "; ".join(f"epoch {c['epoch']} ({c['rule']}, FGSM {100 * c['fgsm_acc']:.1f}% vs PGD "
                          f"{100 * c['pgd_acc']:.1f}%)" for c in summary["collapses"]) or "no"
    median = statistics.median(r["seconds"] for r in epochs) if epochs else float("nan")
    rows[name] = (config, ev)
    clean = f"{100 * ev['clean_accuracy']:.2f}%" if ev else "–"
    robust = f"{100 * ev['worst_case_accuracy'][0]:.2f}%" if ev else "–"
    print(f"| {name} | {config['method']} | {config['eps']} | {config['seed']} | {config.get('clip_start', True)} | "
          f"{clean} | {robust} | {median:.1f} | {summary['epochs_completed']}/{summary['epochs_planned']} | "
          f"{summary['best_epoch']} | {collapsed} | {summary.get('final_method', config['method'])} |")
print()
for name, (config, ev) in rows.items():
    if config["method"] == "pgd" or ev is None:
        continue
    references = [e for c, e in rows.values() if c["method"] == "pgd" and c["eps"] == config["eps"] and e]
    if references:
        reference = statistics.mean(e["worst_case_accuracy"][0] for e in references)
        share = ev["worst_case_accuracy"][0] / reference
        print(f"{name}: PGD-50×10 {100 * ev['worst_case_accuracy'][0]:.2f}% = {100 * share:.1f}% of PGD-10 AT's "
              f"{100 * reference:.2f}% (mean of {len(references)} seed(s)); at least 90%: {'yes' if share >= 0.9 else 'NO'}")
PY
