#!/usr/bin/env bash
# "Reproducing the papers" (BENCHMARKS.md): each paper's setting trained by advlab's own command, with nothing
# but what the row names, then measured on the full MNIST test set with the paper's attack.
#   bash benchmarks/reproduce.sh ROW [ARGS]     rows below; runs go to runs/repro/NAME (reused when finished)
# Needs MNIST: `.venv/bin/python benchmarks/mnist_setup.py` writes it to ~/.cache/advlab-bench/mnist, found
# through $ADVLAB_DATA (set here when unset). RETRAIN=1 trains again; SUITE=0 skips the standard suite; SUITE_N=K runs it on the first K
# test images only (its result file says so: eval-standard-nK.json).
#   fgsm SEED...          Wong et al.: advlab train --dataset mnist --method fgsm --eps 0.3 --seed SEED; PGD-50×10
#                         with their α = 0.01 and advlab's --suite standard
#   preset NAME           a shipped training preset (mnist-quick), the same evaluation
#   train NAME EPS FLAGS  any other training command (clipped start, N-FGSM settings), the same evaluation
#   certified NAME EPS FLAGS   IBP / CROWN-IBP: advlab train FLAGS, then advlab certify (IBP and CROWN-IBP
#                         bounds) and PGD-50×10 on the full test set
set -euo pipefail
cd "$(dirname "$0")/.."
export ADVLAB_DATA="${ADVLAB_DATA:-$HOME/.cache/advlab-bench}"
advlab=.venv/bin/advlab
out=runs/repro
mkdir -p "$out"

train() {  # train NAME ARGS...: unless already finished
    local name=$1
    shift
    if [[ "${RETRAIN:-0}" == 1 || ! -f "$out/$name/summary.json" ]]; then
        $advlab train "$@" --out "$out/$name" --overwrite --quiet
        rm -f "$out/$name"/eval-*.json "$out/$name"/certify-*.json
    fi
}
evaluate() {  # evaluate NAME EPS: PGD-50×10 at the paper's α = ε/30, then the standard suite
    local name=$1 eps=$2
    [[ -f "$out/$name/eval-pgd50x10.json" ]] || $advlab evaluate "$out/$name" --attack pgd50x10 --step-ratio 1/30 \
        --eps "$eps" --out "$out/$name/eval-pgd50x10.json" --quiet
    local n=${SUITE_N:-} file="$out/$name/eval-standard${SUITE_N:+-n$SUITE_N}.json"
    if [[ "${SUITE:-1}" == 1 && ! -f "$file" ]]; then
        $advlab evaluate "$out/$name" --suite standard --eps "$eps" ${n:+--n "$n"} --out "$file" --quiet
    fi
}
row=${1:?give a row: fgsm, preset, train or certified}
shift
case "$row" in
    fgsm)
        for seed in "$@"; do
            train "mnist-fgsm-s$seed" --dataset mnist --method fgsm --eps 0.3 --seed "$seed"
            evaluate "mnist-fgsm-s$seed" 0.3
        done ;;
    preset)
        train "$1" --preset "$1"
        evaluate "$1" 0.3 ;;
    train)
        name=$1 eps=$2
        shift 2
        train "$name" --eps "$eps" "$@"
        evaluate "$name" "$eps" ;;
    certified)
        name=$1 eps=$2
        shift 2
        train "$name" --eps "$eps" "$@"
        for bound in ibp crown-ibp; do
            [[ -f "$out/$name/certify-$bound.json" ]] || $advlab certify "$out/$name" --method "$bound" --eps "$eps" \
                --out "$out/$name/certify-$bound.json" --quiet
        done
        SUITE=0 evaluate "$name" "$eps" ;;
    *) echo "reproduce.sh: unknown row $row" >&2; exit 2 ;;
esac
