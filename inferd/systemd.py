"""The two systemd protocols inferd speaks: sd_notify(3) and socket activation (sd_listen_fds(3)).

Both are no-ops outside systemd, and `notify` never raises nor waits long: a lost status line must
not stop serving.
"""

from __future__ import annotations

import os
import socket
import time

LISTEN_FDS_START = 3
# A datagram socket whose reader has fallen behind (its queue holds net.unix.max_dgram_qlen
# datagrams, 10 by default) blocks the sender; the main loop sends these, so it waits this long
# at most and drops the line.
NOTIFY_PATIENCE = 0.5


def notify(*fields: str, env: dict | None = None) -> bool:
    """Send "KEY=value" fields to $NOTIFY_SOCKET in one datagram; False when unset or it failed."""
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(NOTIFY_PATIENCE)
            sock.connect(address)
            sock.sendall("\n".join(fields).encode("utf-8", "replace"))
        return True
    except OSError:
        return False


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it in MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(env: dict | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked for.

    Like sd_watchdog_enabled(3): None for another WATCHDOG_PID, and for a value that is not a
    positive integer (0 would make the pinging loop spin).
    """
    env = env if env is not None else os.environ
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


def listen_sockets(env: dict | None = None) -> list[socket.socket]:
    """The sockets systemd passed (LISTEN_FDS for this PID), as socket objects; [] when none."""
    env = env if env is not None else os.environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # children must not think the fds are theirs
    return sockets
