#!/bin/sh
# Install inferd as a systemd service (run as root; `make install` runs this). Safe to run again:
# it upgrades the venv to this checkout, rebuilds the model only when its recipe changed, and never
# overwrites an existing config.
#
#   PREFIX=/opt/inferd          venv ($PREFIX/bin/inferd), the default model
#                               ($PREFIX/models/efficientnet-lite0, read-only to the service), docs
#   SYSCONFDIR=/etc/inferd      inferd.conf (created from inferd.conf.example if missing)
#   UNITDIR=/etc/systemd/system inferd.service, inferd.socket, inferd@.service (a fleet's instances,
#                               with $PREFIX/bin/inferd-roll: systemd/README-fleet.md)
#   VENV_PYTHON=/usr/bin/python3  the venv's interpreter: it must be readable by every user, since
#                               the service runs as a DynamicUser (a pyenv under /root is not)
#
# The unit files name /opt/inferd and /etc/inferd; other PREFIX/SYSCONFDIR values are written into
# the installed copies. Nothing is enabled or started: `systemctl enable --now inferd` does that.
set -eu

PREFIX=${PREFIX:-/opt/inferd}
SYSCONFDIR=${SYSCONFDIR:-/etc/inferd}
UNITDIR=${UNITDIR:-/etc/systemd/system}
VENV_PYTHON=${VENV_PYTHON:-/usr/bin/python3}
SRC=$(cd "$(dirname "$0")/.." && pwd)
SHARE=$PREFIX/share/inferd
MODEL_DIR=$PREFIX/models/efficientnet-lite0

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: %s\n' "$*" >&2; exit 1; }

case $PREFIX in /*) ;; *) die "PREFIX must be an absolute path, not '$PREFIX'" ;; esac
case $SYSCONFDIR in /*) ;; *) die "SYSCONFDIR must be an absolute path, not '$SYSCONFDIR'" ;; esac
[ -x "$VENV_PYTHON" ] || die "$VENV_PYTHON not found (set VENV_PYTHON to a system-wide python3 >= 3.10)"
"$VENV_PYTHON" -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' ||
    die "$VENV_PYTHON: need python >= 3.10 with the venv module (Debian: apt-get install python3-venv)"

# Everything installed is read by the service's dynamic user: world-readable, root-owned.
umask 022

# 1. The venv, with inferd built from a copy of the checkout (pip would write build/ into it).
if [ ! -x "$PREFIX/bin/python" ]; then
    say "creating venv $PREFIX from $VENV_PYTHON"
    "$VENV_PYTHON" -m venv "$PREFIX"
fi
touch "$PREFIX/.inferd-install"  # uninstall.sh removes $PREFIX only when this marker is there
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -R "$SRC/setup.cfg" "$SRC/pyproject.toml" "$SRC/inferd" "$work/"
[ -f "$SRC/README.md" ] && cp "$SRC/README.md" "$work/"
say "installing inferd and its model-building extra into $PREFIX"
"$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --upgrade --force-reinstall --no-deps "$work"
"$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    "${work}[build]"

# 2. The default model (skipped by build.py when model.onnx already has this recipe).
say "building the default model into $MODEL_DIR"
mkdir -p "$MODEL_DIR"
"$PREFIX/bin/python" "$SRC/models/build.py" efficientnet-lite0 --out "$MODEL_DIR"

# 3. Docs and the example config with the model path made absolute; the config only if missing.
mkdir -p "$SHARE/systemd" "$SYSCONFDIR"
sed "s|^path = models/efficientnet-lite0\$|path = $MODEL_DIR|" "$SRC/inferd.conf.example" > "$SHARE/inferd.conf.example"
grep -q "^path = $MODEL_DIR\$" "$SHARE/inferd.conf.example" || die "inferd.conf.example: no 'path = ' line to rewrite"
cp "$SRC/systemd/notify-reload.conf" "$SHARE/systemd/"
mkdir -p "$SHARE/systemd/haproxy"
cp "$SRC/systemd/haproxy/inferd.cfg" "$SHARE/systemd/haproxy/"
cp "$SRC/README.md" "$SHARE/README.md"
cp "$SRC/systemd/README-fleet.md" "$SHARE/README-fleet.md"
cp "$SRC/systemd/README.md" "$SHARE/README-service.md"
if [ -e "$SYSCONFDIR/inferd.conf" ]; then
    say "keeping existing $SYSCONFDIR/inferd.conf (the current example is $SHARE/inferd.conf.example)"
else
    install -m 0644 "$SHARE/inferd.conf.example" "$SYSCONFDIR/inferd.conf"
    say "wrote $SYSCONFDIR/inferd.conf"
fi
"$PREFIX/bin/inferd" --config "$SYSCONFDIR/inferd.conf" --check-config

# 4. The units, with this PREFIX and SYSCONFDIR written in, and the fleet's rolling reload/restart.
mkdir -p "$UNITDIR"
for unit in inferd.service inferd.socket inferd@.service; do
    sed -e "s|/opt/inferd|$PREFIX|g" -e "s|/etc/inferd|$SYSCONFDIR|g" "$SRC/systemd/$unit" > "$work/$unit"
    install -m 0644 "$work/$unit" "$UNITDIR/$unit"
done
say "installed $UNITDIR/inferd.service, inferd.socket and inferd@.service"
sed -e "1s|.*|#!$PREFIX/bin/python|" -e "s|/etc/inferd/instances|$SYSCONFDIR/instances|" "$SRC/systemd/inferd-roll" > "$work/inferd-roll"
install -m 0755 "$work/inferd-roll" "$PREFIX/bin/inferd-roll"

# sd_booted(3): systemd is the running init when this directory exists.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl daemon-reload
    if systemctl is-active --quiet inferd.service; then
        say "inferd is running: 'systemctl restart inferd' to run the new code"
    else
        say "start it with: systemctl enable --now inferd"
    fi
else
    say "systemd is not running here; units installed, not loaded"
fi
