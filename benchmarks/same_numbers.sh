#!/usr/bin/env bash
# Does a change alter any number? Run the quick study at REV (from a throw-away worktree, with this
# checkout's .venv) and at this checkout, then compare every accuracy, curve, check and gallery target.
#   bash benchmarks/same_numbers.sh 74fb18c            # prints "identical" or each difference; exit 1 if any
# Needs about twice the quick study's time. Wall times are not compared (they are never identical).
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:?usage: $0 REV}"
tmp="$(mktemp -d)"
trap 'git worktree remove --force "$tmp/old" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git worktree add --detach "$tmp/old" "$rev" >/dev/null 2>&1
python="$PWD/.venv/bin/python"  # not resolved: the link is what makes it the venv
(cd "$tmp/old" && PYTHONPATH="$tmp/old/src" "$python" -m advlab.cli study --preset quick --out "$tmp/at-rev" --quiet \
    >/dev/null)
.venv/bin/advlab study --preset quick --out "$tmp/here" --quiet >/dev/null
"$python" - "$tmp/at-rev/metrics.json" "$tmp/here/metrics.json" "$rev" "$(git rev-parse --short HEAD)" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])

def numbers(m):
    models = {n: {k: v for k, v in x.items() if "seconds" not in k and k != "epochs"} for n, x in m["models"].items()}
    epochs = {n: [{k: v for k, v in e.items() if "seconds" not in k} for e in x["epochs"]] for n, x in m["models"].items()}
    checks = [(c["model"], c["check"], c["passed"], c["numbers"]) for c in m["sanity_checks"]]
    return {"models": models, "epochs": epochs, "checks": checks, "best": m["best_robust_model"],
            "gallery targets": m.get("gallery", {}).get("targets")}

na, nb = numbers(a), numbers(b)
differ = [k for k in na if na[k] != nb[k]]
print(f"quick study at {sys.argv[3]} and at {sys.argv[4]}: " + ("identical (every accuracy, curve, epoch, check "
      "and gallery target)" if not differ else "differ in " + ", ".join(differ)))
for name, m in b["models"].items():
    print(f"  {m['label']}: clean {100 * m['clean_accuracy']:.1f}%, worst case at ε = {b['train_eps']:g} over every "
          f"attack {100 * m['worst_case_all_attacks']['accuracy']:.1f}%")
sys.exit(1 if differ else 0)
PY
