"""`inferd-reload`: a synchronous reload for systemd 252's ExecReload= (no Type=notify-reload there).

`inferd-reload --pid $MAINPID` reads the reload generation from $RUNTIME_DIRECTORY/reload-status.json
(written by the daemon after startup and after every reload attempt), sends SIGHUP, and waits until
the daemon writes a higher generation. Exit codes: 0 the new model serves; 1 the reload failed and the
old model keeps serving; 2 the reload could not be asked for or followed (no status file, wrong pid,
the process exited); 3 no answer within --timeout. A reload that POST /admin/reload started in the
same instant may be the one that answers; it read the same config file.

Standard library only, and it never imports onnxruntime: systemd runs it on every reload.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

STATUS_FILE = "reload-status.json"  # the daemon's name for it (daemon.RELOAD_STATUS_FILE)
DEFAULT_RUNTIME_DIRECTORY = "/run/inferd"
POLL_INTERVAL = 0.05

OK, FAILED, UNAVAILABLE, TIMED_OUT = 0, 1, 2, 3


class ReloadError(RuntimeError):
    """The reload could not be requested or followed; `exit_code` says how main() should exit."""

    def __init__(self, message: str, exit_code: int = UNAVAILABLE):
        super().__init__(message)
        self.exit_code = exit_code


def status_path(runtime_directory: str | None = None, env: dict | None = None) -> Path:
    """The status file in the given directory, else the first of $RUNTIME_DIRECTORY, else /run/inferd."""
    env = env if env is not None else os.environ
    directory = runtime_directory or env.get("RUNTIME_DIRECTORY", "").split(":")[0] or DEFAULT_RUNTIME_DIRECTORY
    return Path(directory) / STATUS_FILE


def read_status(path: Path) -> dict | None:
    """The status the daemon last wrote, or None while the file is missing or being replaced.

    The daemon replaces the file atomically (rename), so a partial read is not expected; a file that
    does not parse is treated as not there yet and read again on the next poll.
    """
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(status, dict) or not isinstance(status.get("generation"), int):
        return None
    return status


def _alive(pid: int) -> bool:
    """True while `pid` exists and has not exited (a zombie waiting for its parent counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, it is just not ours to signal
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc to ask: kill(0) said it exists
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def reload(pid: int, path: Path, timeout: float, poll_interval: float = POLL_INTERVAL) -> dict:
    """SIGHUP `pid` and return the status of the reload that answered it.

    Raises ReloadError when the status file is missing or belongs to another process, when the
    process cannot be signalled or exits, or (exit_code TIMED_OUT) when no new generation comes.
    """
    before = read_status(path)
    if before is None:
        raise ReloadError(f"{path}: missing or unreadable; is inferd (pid {pid}) running with "
                          "RuntimeDirectory= set? Nothing was reloaded.")
    if before.get("pid") != pid:
        raise ReloadError(f"{path} was written by pid {before.get('pid')}, not {pid}; nothing was reloaded")
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise ReloadError(f"cannot signal pid {pid}: {exc.strerror or exc}") from None
    deadline = time.monotonic() + timeout
    while True:
        status = read_status(path)
        if status is not None and status.get("pid") == pid and status["generation"] > before["generation"]:
            return status
        if not _alive(pid):
            raise ReloadError(f"pid {pid} exited during the reload")
        if time.monotonic() >= deadline:
            raise ReloadError(f"no reload result from pid {pid} within {timeout:g}s; it may still finish "
                              f"(see {path})", TIMED_OUT)
        time.sleep(poll_interval)


def _say(priority: int, text: str, stream) -> None:
    """One line; with a "<N>" journal priority prefix when stdout/stderr go to the journal."""
    prefix = f"<{priority}>" if os.environ.get("JOURNAL_STREAM") else ""
    print(f"{prefix}inferd-reload: {text}", file=stream, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="inferd-reload",
        description="Reload a running inferd and wait for the outcome (for systemd's ExecReload=).")
    parser.add_argument("--pid", type=int, required=True, help="the daemon's pid ($MAINPID under systemd)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")
    parser.add_argument("--runtime-directory",
                        help="where reload-status.json is (default: $RUNTIME_DIRECTORY, else "
                             f"{DEFAULT_RUNTIME_DIRECTORY})")
    args = parser.parse_args(argv)
    if args.pid <= 0:
        parser.error("--pid must be a positive process id")
    if not args.timeout > 0:
        parser.error("--timeout must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        status = reload(args.pid, status_path(args.runtime_directory), args.timeout)
    except ReloadError as exc:
        _say(3, str(exc), sys.stderr)
        return exc.exit_code
    for warning in status.get("warnings", []):
        _say(4, f"warning: {warning}", sys.stderr)
    if status.get("ok"):
        _say(6, f"reloaded (generation {status['generation']}): {status.get('message', '')}", sys.stdout)
        return OK
    _say(3, f"reload failed, the previous model keeps serving: {status.get('message', '')}", sys.stderr)
    return FAILED


if __name__ == "__main__":
    sys.exit(main())
