#!/usr/bin/env bash
# The test command (also what CI runs): set up on a fresh clone, then run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 -m pytest tests "$@"
