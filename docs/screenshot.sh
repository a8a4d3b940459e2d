#!/usr/bin/env bash
# Screenshot a study's report.html with headless Chromium (apt-get install chromium), e.g. for the README:
#   docs/screenshot.sh runs/quick docs/report-screenshot.png [WIDTH,HEIGHT]
# The report is self-contained, so this needs no network and no server.
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: $0 RUN_DIR OUT.png [WIDTH,HEIGHT (default 1200,3000)]" >&2
    exit 2
fi
report="$(realpath "$1")/report.html"
out="$(realpath -m "$2")"
size="${3:-1200,3000}"
[[ -f "$report" ]] || { echo "$0: $report does not exist; run \`advlab report $1\` first" >&2; exit 2; }
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[[ -n "$browser" ]] || { echo "$0: no Chromium on PATH; apt-get install chromium" >&2; exit 2; }
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
mkdir -p "$(dirname "$out")"
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
    --user-data-dir="$profile" --window-size="$size" --screenshot="$out" "file://$report" >/dev/null 2>&1
[[ -s "$out" ]] || { echo "$0: Chromium wrote no screenshot" >&2; exit 1; }
echo "$out"
