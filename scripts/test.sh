#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test suite (unit, kernel, shard, router,
# bench and integration). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TRITON_INTERPRET=1
exec python -m pytest -q "$@"
