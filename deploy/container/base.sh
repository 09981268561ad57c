#!/bin/sh
# Make a Debian bookworm base image from this machine's own apt sources, for hosts that reach no
# container registry: mmdebstrap writes a minimal root file system (python3 and python3-venv
# included) as a tar stream, and `podman import` turns it into an image (~45 s, 179 MB here).
#
#   sh deploy/container/base.sh [TAG]        TAG defaults to localhost/inferd-base:bookworm
#   SOURCES=/etc/apt/sources.list.d/debian.sources   the apt sources file to use (one-line or deb822)
#
# Then build with `--build-arg BASE=TAG` (see Containerfile). Run as root (mmdebstrap's root mode).
set -eu

TAG=${1:-localhost/inferd-base:bookworm}
if [ -z "${SOURCES:-}" ]; then
    for SOURCES in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list ""; do
        [ -s "$SOURCES" ] && break
    done
fi
[ -n "$SOURCES" ] || { echo "base.sh: no apt sources file found; set SOURCES" >&2; exit 1; }

# Without manuals, translations and docs (but with the copyright files), as debian:*-slim images.
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    bookworm - "$SOURCES" | podman import --quiet - "$TAG"
echo "base.sh: imported $TAG from bookworm ($SOURCES)"
