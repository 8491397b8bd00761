#!/usr/bin/env bash
# The README's start command: install what is needed, then run the demo hub in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cat <<'TEXT'

  jupyterhub-credits demo: http://127.0.0.1:8000
  log in with any user name and the password "demo"; the user "admin" is an admin.
  new users get 75 signup credits. Stop with Ctrl-C. State lives in .demo/

TEXT
exec .venv/bin/jupyterhub -f config/jupyterhub_config.py
