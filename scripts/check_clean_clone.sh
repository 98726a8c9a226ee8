#!/usr/bin/env bash
# Clone this repository into a temporary folder and run the README's set-up there (fresh .venv).
# Usage: scripts/check_clean_clone.sh [make target, default "venv"]   e.g. "test" for the full suite.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
target=${1:-venv}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git clone --quiet "$src" "$tmp/rsprompt"
# ../shared sits beside the clone in CI; link it when this checkout has one.
[ -d "$src/../shared" ] && ln -s "$(cd "$src/../shared" && pwd)" "$tmp/shared"
cd "$tmp/rsprompt"
make "$target"
.venv/bin/rsprompt --version
