#!/usr/bin/env bash
# Install everything the project needs into .venv/ (idempotent; fast when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

apt_install() {
  echo "setup: installing Debian packages: $*"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1 || ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
  apt_install python3 python3-venv python3-pip
  PYTHON=python3
fi
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
  apt_install python3-venv
fi

# Browser tests drive Debian's Chromium through the playwright package (its own browser
# download, `playwright install`, is never used).
if [ ! -x /usr/bin/chromium ]; then
  apt_install chromium
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi

# Reinstall only when the package metadata changed.
stamp=.venv/.jupyterhub-credits-installed
wanted=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test]'
  echo "$wanted" > "$stamp"
fi

# An editable install skips data files: enable the server extension in the venv the way a
# wheel install does (the same file, in the venv's etc/jupyter).
mkdir -p .venv/etc/jupyter/jupyter_server_config.d
cp jupyter-config/jupyter_server_config.d/jupyterhub_credits.json .venv/etc/jupyter/jupyter_server_config.d/

# The JupyterLab extension: built with the venv's jlpm, linked into the venv (skipped when unchanged).
bash scripts/build-labextension.sh
