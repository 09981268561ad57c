"""The listening end of sd_notify(3), for whoever starts inferd as systemd would: the tests, the
benchmarks and `inferd tune`. A datagram socket bound where $NOTIFY_SOCKET will point; every
message it got is kept, so that a field can be waited for whether or not it already came."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable


class NotifyReceiver:
    def __init__(self, directory: Path, name: str = "notify.sock"):
        self.path = str(Path(directory) / name)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, timeout: float = 60.0,
                 alive: Callable[[], bool] = lambda: True) -> dict[str, str]:
        """The first message (new or already seen) with `key` (= `value`). Raises TimeoutError
        after `timeout` seconds, or once alive() is false (the process that would send it died)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if key in message and (value is None or message[key] == value):
                    return message
            seen = len(self.messages)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not alive():
                raise TimeoutError(f"no {key}={value} in {self.messages}")
            self.sock.settimeout(min(remaining, 0.5))
            try:
                raw = self.sock.recv(65536).decode("utf-8", "replace")
            except socket.timeout:
                continue
            self.messages.append(dict(line.split("=", 1) for line in raw.splitlines() if "=" in line))

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
