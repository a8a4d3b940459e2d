#!/usr/bin/env bash
# Does a change alter any number? Run the quick study at REV and at NEW (default HEAD), each from a
# throw-away worktree of that commit with this checkout's .venv (uncommitted edits here never leak in),
# then compare every accuracy, curve, check, arms-race row, certificate and gallery target.
#   bash benchmarks/same_numbers.sh 953812f [427b7ce]   # prints "identical" or each difference; exit 1 if any
# Needs about twice the quick study's time. Wall times are not compared (they are never identical); a key only
# one side writes (a field added since REV) is listed but is not a difference in the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:?usage: $0 REV [NEW]}"
new="$(git rev-parse --short "${2:-HEAD}")"
tmp="$(mktemp -d)"
trap 'git worktree remove --force "$tmp/old" >/dev/null 2>&1 || true; git worktree remove --force "$tmp/new" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
python="$PWD/.venv/bin/python"  # not resolved: the link is what makes it the venv
for side in old new; do
    commit="$rev"; [ "$side" = new ] && commit="$new"
    git worktree add --detach "$tmp/$side" "$commit" >/dev/null 2>&1
    (cd "$tmp/$side" && PYTHONPATH="$tmp/$side/src" "$python" -m advlab.cli study --preset quick \
        --out "$tmp/at-$side" --quiet >/dev/null)
done
"$python" - "$tmp/at-old/metrics.json" "$tmp/at-new/metrics.json" "$rev" "$new" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
TIMES = ("seconds", "time")  # wall times are never identical

def strip(value):
    """Every number and word of a metrics.json, wall times left out."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if not any(t in k for t in TIMES)}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value

def moved(x, y, path=""):
    """Each place where the two differ: a changed value, or a key only one side has."""
    if isinstance(x, dict) and isinstance(y, dict):
        out = []
        for k in sorted(set(x) | set(y)):
            if k not in x:
                out.append(f"{path}/{k}: new ({json.dumps(y[k])[:80]})")
            elif k not in y:
                out.append(f"{path}/{k}: gone")
            else:
                out += moved(x[k], y[k], f"{path}/{k}")
        return out
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        return [d for i, (u, v) in enumerate(zip(x, y)) for d in moved(u, v, f"{path}[{i}]")]
    return [] if x == y else [f"{path}: {json.dumps(x)[:80]} -> {json.dumps(y)[:80]}"]

na, nb = strip(a), strip(b)
changes = moved(na, nb)
values = [c for c in changes if not c.endswith("gone") and ": new (" not in c]
print(f"quick study at {sys.argv[3]} and at {sys.argv[4]}: "
      + ("identical numbers (every accuracy, curve, epoch, check, arms-race row, certificate and gallery target)"
         if not values else f"{len(values)} numbers differ"))
for c in changes:
    print("  " + c)
for name, m in b["models"].items():
    print(f"  {m['label']}: clean {100 * m['clean_accuracy']:.1f}%, worst case at ε = {b['train_eps']:g} over every "
          f"attack {100 * m['worst_case_all_attacks']['accuracy']:.1f}%")
sys.exit(1 if values else 0)
PY
