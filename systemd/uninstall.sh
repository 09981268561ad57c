#!/bin/sh
# Reverse systemd/install.sh (run as root; `make uninstall` runs this), with the same PREFIX,
# SYSCONFDIR and UNITDIR. Stops and disables the units, removes them and the venv. The config is
# removed only when it is still the installed one; an edited config is kept (PURGE=1 removes it too).
set -eu

PREFIX=${PREFIX:-/opt/inferd}
SYSCONFDIR=${SYSCONFDIR:-/etc/inferd}
UNITDIR=${UNITDIR:-/etc/systemd/system}
PURGE=${PURGE:-0}

say() { printf 'uninstall: %s\n' "$*"; }

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl disable --now inferd.socket inferd.service 2>/dev/null || true
    systemctl stop 'inferd@*.service' 2>/dev/null || true
fi
rm -f "$UNITDIR/inferd.service" "$UNITDIR/inferd.socket" "$UNITDIR/inferd@.service"
# What `systemctl enable inferd@NAME` linked (the template is gone, so systemctl cannot disable it).
rm -f "$UNITDIR"/*.wants/inferd@*.service
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl daemon-reload
    systemctl reset-failed inferd.service inferd.socket 2>/dev/null || true
fi
say "removed the units from $UNITDIR"
[ -d "$UNITDIR/inferd.service.d" ] && say "left $UNITDIR/inferd.service.d (local drop-ins) in place"

config=$SYSCONFDIR/inferd.conf
if [ -f "$config" ]; then
    if [ "$PURGE" = 1 ] || cmp -s "$config" "$PREFIX/share/inferd/inferd.conf.example"; then
        rm -f "$config"
        rmdir "$SYSCONFDIR" 2>/dev/null || true
        say "removed $config"
    else
        say "kept $config: it was edited (PURGE=1 removes it)"
    fi
fi

if [ -f "$PREFIX/.inferd-install" ]; then
    rm -rf "$PREFIX"
    say "removed $PREFIX"
elif [ -e "$PREFIX" ]; then
    say "left $PREFIX alone: it has no .inferd-install marker, so install.sh did not make it"
fi
