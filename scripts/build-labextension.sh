#!/usr/bin/env bash
# Build the JupyterLab extension (labextension/, TypeScript) into jupyterhub_credits/labextension/
# and make the venv's JupyterLab load it. Run by scripts/setup.sh after the pip install (the
# builder, jupyter-builder, and jlpm come with the venv's JupyterLab); fast when nothing changed.
# FORCE=1 rebuilds even when the sources did not change.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=jupyterhub_credits/labextension
STAMP=.venv/.jupyterhub-credits-labextension
# An editable install does not install data files: the venv's JupyterLab sees the build output
# through this link, so every rebuild is live without reinstalling.
LINK=.venv/share/jupyter/labextensions/jupyterhub-credits

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

node_ok() {
  command -v node >/dev/null 2>&1 &&
    node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)'
}
if ! node_ok; then
  echo "build-labextension: installing Debian's nodejs (node >= 18 is needed)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
  node_ok || { echo "build-labextension: node >= 18 is needed, found $(node --version 2>&1)" >&2; exit 1; }
fi

if [ ! -x .venv/bin/jlpm ]; then
  echo "build-labextension: .venv/bin/jlpm is missing: run scripts/setup.sh first" >&2
  exit 1
fi
# jlpm and the package scripts (jupyter-builder) come from the venv.
export PATH="$ROOT/.venv/bin:$PATH"

# What the build depends on; the output (and node_modules, for Jest) must be there too.
sources_hash() {
  find labextension/package.json labextension/yarn.lock labextension/.yarnrc.yml \
    labextension/tsconfig.json labextension/install.json labextension/src labextension/style \
    -type f -not -path '*/__tests__/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}
wanted=$(sources_hash)
if [ "${FORCE:-}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ] &&
  [ -f "$OUT/package.json" ] && [ -d "$OUT/static" ] && [ -d labextension/node_modules ]; then
  echo "build-labextension: up to date"
else
  echo "build-labextension: building $OUT"
  immutable=()
  # CI installs exactly what yarn.lock says, or fails.
  case "${CI:-}" in 1 | true | yes) immutable=(--immutable) ;; esac
  # Quiet unless it fails: then everything yarn and the builder said.
  if ! log=$(cd labextension && jlpm install "${immutable[@]}" 2>&1 && jlpm build:prod 2>&1); then
    echo "$log" >&2
    echo "build-labextension: the build failed (output above)" >&2
    exit 1
  fi
  cp labextension/install.json "$OUT/install.json"
  echo "$wanted" >"$STAMP"
fi

mkdir -p "$(dirname "$LINK")"
if [ "$(readlink "$LINK" 2>/dev/null)" != "$ROOT/$OUT" ]; then
  rm -rf "$LINK"
  ln -s "$ROOT/$OUT" "$LINK"
fi
