#!/usr/bin/env bash
# Every figure of README.md and BENCHMARKS.md, measured again: each stage writes its result files under
# benchmarks/results/ with the command, the git commit, the date and the machine (see record.py).
#
#   bash benchmarks/rerun.sh                 # every stage, in this order (about 7 hours on 2 CPU cores)
#   bash benchmarks/rerun.sh quick-study attacks     # chosen stages only
#
# Run it in a clean checkout of the commit you measure (`git worktree add ../bench HEAD`), after
# `bash scripts/setup.sh && bash benchmarks/setup.sh`, with nothing else running: most stages time things.
# Stages that need a trained model train it first (runs/ is reused when it is already there).
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
advlab=.venv/bin/advlab
rec=("$py" benchmarks/record.py)
out=benchmarks/results

standard-model() {
    "${rec[@]}" standard-model --attach runs/bench-standard/summary.json --attach runs/bench-standard/eval.json \
        -- bash benchmarks/standard_model.sh runs/bench-standard
}
quick-study() {
    "${rec[@]}" quick-study --attach runs/quick/metrics.json \
        -- "$advlab" study --preset quick --out runs/quick --overwrite --quiet
}
recipe() {  # recipe NAME FOLDER: a training preset, then PGD-50×10 at ε = 0.1 on all 10,000 test images
    "${rec[@]}" "$1-recipe" --attach "runs/$2/summary.json" --attach "runs/$2/metrics.jsonl" \
        --attach "runs/$2/eval-pgd50x10.json" \
        -- "$advlab" train --preset "$1" --out "runs/$2" --overwrite --quiet \
        --then "$advlab" evaluate "runs/$2" --attack pgd50x10 --eps 0.1 --out "runs/$2/eval-pgd50x10.json" \
        --overwrite --quiet
}
quick-recipe() { recipe quick train-quick; }
full-recipe() { recipe full train-full; }
attacks() {
    "$py" benchmarks/bench_attacks.py --n 500 --repeats 3 \
        --libs "advlab,torchattacks,ART,limit,limit NCHW,advlab NCHW,torchattacks CL,ART CL,advlab early-stop,advlab bf16" \
        --out "$out/attacks.json" | tee "$out/attacks.log"
}
fgsm-identity() {
    "$py" benchmarks/bench_fgsm_identity.py --out "$out/fgsm_identity.json" | tee "$out/fgsm_identity.log"
}
eval-speed() {
    "$py" benchmarks/bench_eval.py --n 1000 --repeats 3 --out "$out/eval.json" | tee "$out/eval.log"
}
train-epochs() {
    "$py" benchmarks/bench_train.py --n 10000 --repeats 3 --methods standard,fgsm,pgd3,pgd7,pgd10,trades,mart,free \
        --out "$out/train.json" | tee "$out/train.log"
}
train-fast() {  # issue 12: N-FGSM and GradAlign epochs against FGSM's and a standard one
    "$py" benchmarks/bench_train.py --n 10000 --repeats 3 --methods standard,fgsm,nfgsm,gradalign \
        --out "$out/train-fast.json" | tee "$out/train-fast.log"
}
tuning() {
    "$py" benchmarks/bench_tuning.py --out "$out/tuning.json" | tee "$out/tuning.log"
}
eval-batch() {
    [[ -f runs/train-quick/best.safetensors ]] || quick-recipe
    "$py" benchmarks/bench_eval_batch.py --run runs/train-quick --n 1000 --out "$out/eval-batch-robust.json" \
        | tee "$out/eval-batch-robust.log"
    "$py" benchmarks/bench_eval_batch.py --n 2000 --out "$out/eval-batch-standard.json" \
        | tee "$out/eval-batch-standard.log"
}
agreement() {
    [[ -f runs/train-quick/best.safetensors ]] || quick-recipe
    "$py" benchmarks/bench_agreement.py --n 10000 --robust runs/train-quick --out "$out/agreement.json" \
        | tee "$out/agreement.log"
}
methods() {  # two one-thread halves side by side, each recorded with the command that trained and evaluated it
    half() {
        local name=$1 attach=()
        shift
        for method in "$@"; do
            attach+=(--attach "runs/methods/$method/summary.json" --attach "runs/methods/$method/metrics.jsonl"
                     --attach "runs/methods/$method/eval-pgd50x10-n10000.json")
        done
        "${rec[@]}" "$name" "${attach[@]}" \
            -- env OMP_NUM_THREADS=1 RETRAIN=1 bash benchmarks/methods_table.sh 10000 runs/methods "$@"
    }
    half methods-n10000-a standard fgsm nfgsm gradalign gradreg free &
    local first=$!
    half methods-n10000-b pgd trades-b1 trades-b6 mart &
    wait "$first"
    wait "$!"  # each wait fails the stage if its half failed
}
gradreg() {  # issue 15: gradient regularization against fast FGSM AT on the method table's budget
    local attach=()
    for name in standard fgsm gradreg; do
        attach+=(--attach "runs/methods/$name/summary.json" --attach "runs/methods/$name/eval-pgd50x10-n10000.json"
                 --attach "runs/methods/$name/eval-apgd-ce-n10000.json")
    done
    APGD=1 RETRAIN=1 "${rec[@]}" methods-gradreg "${attach[@]}" -- bash benchmarks/methods_table.sh 10000 runs/methods \
        standard fgsm gradreg
}
defenses() {  # issue 15: the defenses, naive, oblivious and adaptive, on the quick study's models
    [[ -f runs/quick/models/pgd/model.safetensors ]] || quick-study
    "$py" benchmarks/bench_defenses.py --run runs/quick --n 1000 --threads 2 --out "$out/defenses-apgd.json" \
        | tee "$out/defenses-apgd.log"
}
ibp() {  # issue 16: the IBP recipe, verified on the test set and against the standard suite on 1,000 images
    "${rec[@]}" ibp-train --attach runs/ibp/summary.json --attach runs/ibp/metrics.jsonl \
        --attach runs/ibp/certify-all.json --attach runs/ibp/certify-n1000.json --attach runs/ibp/suite-n1000.json \
        -- "$advlab" train --method ibp --eps 0.1 --out runs/ibp --overwrite --quiet \
        --then "$advlab" certify runs/ibp --eps 0.1 --out runs/ibp/certify-all.json --overwrite --quiet \
        --then "$advlab" certify runs/ibp --eps 0.1 --images 1000 --out runs/ibp/certify-n1000.json --overwrite --quiet \
        --then "$advlab" evaluate runs/ibp --suite standard --eps 0.1 --n 1000 --out runs/ibp/suite-n1000.json \
        --overwrite --quiet
}
fast-at() {  # issue 12: the default fast method (FGSM with the recipe's ε ramp) at ε = 0.2 and 0.3, 3 seeds
    local attach=()
    for run in fgsm-eps0.2-s0 fgsm-eps0.2-s1 fgsm-eps0.2-s2 pgd10-eps0.2-s0; do
        attach+=(--attach "runs/fast-at/$run/summary.json" --attach "runs/fast-at/$run/eval-pgd50x10.json")
    done
    OMP_NUM_THREADS=1 "${rec[@]}" fast-at-eps0.2 "${attach[@]}" -- bash benchmarks/fast_at_study.sh "0.2" "0 1 2" "0" fgsm
    attach=()
    for run in fgsm-eps0.3-s0 fgsm-eps0.3-s1 fgsm-eps0.3-s2; do
        attach+=(--attach "runs/fast-at/$run/summary.json" --attach "runs/fast-at/$run/eval-pgd50x10.json")
    done
    # No PGD-10 reference at 0.3 here: every fast run collapses (the grid in BENCHMARKS.md has PGD-10's
    # validation figure); add "0" as the third argument to train and evaluate it (about an hour).
    OMP_NUM_THREADS=1 "${rec[@]}" fast-at-eps0.3 "${attach[@]}" -- bash benchmarks/fast_at_study.sh "0.3" "0 1 2" " " fgsm
}
scale() {  # issue 18: bf16 against fp32 training of the quick recipe; 2 DDP processes against 1
    "$py" benchmarks/bench_scale.py --out "$out/scale.json"
}
same-numbers() {
    "${rec[@]}" same-numbers-74fb18c -- bash benchmarks/same_numbers.sh 74fb18c
}
full-study() {
    "${rec[@]}" full-study --attach runs/full/metrics.json \
        -- "$advlab" study --preset full --out runs/full --overwrite --quiet
}

stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(standard-model quick-study quick-recipe attacks fgsm-identity eval-speed
                                     train-epochs tuning eval-batch agreement full-recipe methods gradreg train-fast
                                     fast-at defenses ibp scale full-study)
# same-numbers (not in the default list): the quick study before (74fb18c) and after the issue-11 refactor
for stage in "${stages[@]}"; do
    declare -F "$stage" >/dev/null || { echo "rerun.sh: unknown stage $stage" >&2; exit 2; }
    echo "=== $stage: $(date -u +%FT%TZ)"
    "$stage"
done
echo "=== done: $(date -u +%FT%TZ)"
