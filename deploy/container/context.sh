#!/bin/sh
# Assemble the build context of deploy/container/Containerfile in OUT (default build/container/context):
# the wheels of inferd and of everything the image needs, made on this host with its pip settings,
# so that the image build itself needs no network. `make container` runs this, then podman build.
#
#   VENV_PYTHON=/usr/bin/python3   makes the wheels: its major.minor must be the image's python3
#                                  (Debian bookworm: 3.11); the Containerfile checks it.
set -eu
# Wheels with fixed timestamps: an unchanged checkout gives the same context, and podman reuses its layers.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800}

SRC=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$SRC/build/container/context}
VENV_PYTHON=${VENV_PYTHON:-/usr/bin/python3}

say() { printf 'container context: %s\n' "$*"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$OUT"
mkdir -p "$OUT/wheels" "$OUT/models/efficientnet-lite0"

# inferd is built from a copy of the checkout (pip would write build/ into it), with the model
# builder's extra: the build stage needs those wheels, the final stage installs the runtime ones only.
mkdir "$work/src"
cp -R "$SRC/setup.cfg" "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/inferd" "$work/src/"
"$VENV_PYTHON" -m venv "$work/venv"
say "making wheels with $VENV_PYTHON into $OUT/wheels"
"$work/venv/bin/pip" wheel --quiet --disable-pip-version-check --wheel-dir "$OUT/wheels" "$work/src[build]"
"$VENV_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' > "$OUT/wheels/python-version"

cp "$SRC/models/build.py" "$SRC/models/onnx_graphs.py" "$SRC/models/torch_legacy.py" "$OUT/models/"
cp "$SRC/models/efficientnet-lite0/model.ini" "$SRC/models/efficientnet-lite0/labels.txt" \
    "$OUT/models/efficientnet-lite0/"
cp "$SRC/inferd.conf.example" "$OUT/"
say "$(du -sh "$OUT" | cut -f1) in $OUT"
