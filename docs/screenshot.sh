#!/usr/bin/env bash
# Screenshot a study's report.html with headless Chromium, e.g. for the README:
#
#   docs/screenshot.sh RUN_DIR OUT.png [WIDTH,HEIGHT]
#   docs/screenshot.sh runs/quick docs/report-screenshot.png            # the top 1200×2400 px of the report
#
# RUN_DIR is a finished `advlab study` folder (rebuild its report with `advlab report RUN_DIR` first if
# needed). Needs Chromium (Debian: apt-get install -y chromium). The report is self-contained, so this needs
# no network and no server; a throw-away browser profile is used and removed, and the browser is killed
# after 120 s at most.
set -euo pipefail
if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 RUN_DIR OUT.png [WIDTH,HEIGHT (default 1200,2400)]" >&2
    exit 2
fi
report="$(realpath "$1")/report.html"
out="$(realpath -m "$2")"
size="${3:-1200,2400}"
[[ -f "$report" ]] || { echo "$0: $report does not exist; run \`advlab report $1\` first" >&2; exit 2; }
[[ "$size" =~ ^[0-9]+,[0-9]+$ ]] || { echo "$0: size must be WIDTH,HEIGHT in pixels, got $size" >&2; exit 2; }
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[[ -n "$browser" ]] || { echo "$0: no Chromium on PATH; apt-get install -y chromium" >&2; exit 2; }
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
mkdir -p "$(dirname "$out")"
rm -f "$out"
# A file:// URL: escape the characters that would otherwise end or change the path.
url="file://$(printf '%s' "$report" | sed -e 's/%/%25/g' -e 's/ /%20/g' -e 's/#/%23/g' -e 's/?/%3F/g')"
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars --virtual-time-budget=10000 \
    --user-data-dir="$profile" --window-size="$size" --screenshot="$out" "$url" >/dev/null 2>&1 || true
[[ -s "$out" ]] || { echo "$0: Chromium wrote no screenshot" >&2; exit 1; }
echo "$out"
