#!/usr/bin/env bash
# The README's test command: install everything, then run the full test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/test_cli.py -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/ensure-postgres.sh
# The JupyterLab extension's unit tests (Jest) first: seconds, and they fail fast.
(cd labextension && ../.venv/bin/jlpm test --silent)
exec .venv/bin/python -m pytest "$@"
