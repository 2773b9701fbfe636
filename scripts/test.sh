#!/usr/bin/env bash
# The test command (also what CI runs): set up on a fresh clone, then run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Real Lava (a private venv, about 5 min on a fresh machine, seconds once built) so that the NetX
# agreement test runs against the real consumer; without it that test skips.
bash scripts/lava_env.sh >/dev/null || echo "test.sh: the Lava venv could not be built; the real-Lava NetX test will skip" >&2
exec python3 -m pytest tests "$@"
