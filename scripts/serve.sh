#!/usr/bin/env bash
# The serve command: installs what is missing, then starts the whole stack on 127.0.0.1:3000.
# With no model given it serves the built-in demo model. Extra arguments go to prism-launcher, e.g.
#   bash scripts/serve.sh --model-id /path/to/hf-folder --port 8080
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec prism-launcher --hostname "${HOSTNAME_BIND:-127.0.0.1}" "$@"
