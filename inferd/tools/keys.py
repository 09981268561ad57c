"""`inferd-keys`: the API keys file ([auth] keys_file) - add a key, list them, remove one.

    inferd-keys add NAME [--file PATH] [--rate R] [--burst B] [--images-rate R] [--images-burst B]
    inferd-keys list [--file PATH]
    inferd-keys remove NAME [--file PATH]

`add` prints the new key once, on stdout, and appends only its hash to the file (created mode
0600 when missing). The daemon takes the change at its next reload (`systemctl reload inferd`,
SIGHUP or POST /admin/reload); a removed key is refused from then on. Exit codes: 0 done, 1 the
file or name is wrong, 2 bad usage. Never imports onnxruntime.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from ..names import is_name
from ..keys import LIMIT_PARSERS, RESERVED, KeyLine, KeysFileError, key_hash, new_key, parse_keys

DEFAULT_FILE = "/etc/inferd/keys"


class KeysToolError(RuntimeError):
    """What went wrong, for the user; main() exits 1."""


def read_lines(path: Path) -> tuple[str, list[KeyLine]]:
    """The file's text ("" when missing) and its key lines; raises KeysToolError for a bad file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "", []
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysToolError(f"cannot read {path}: {exc}") from None
    try:
        return text, parse_keys(text, str(path))
    except KeysFileError as exc:
        raise KeysToolError(f"{path} is not a valid keys file; fix it first:\n{exc}") from None


def add(path: Path, name: str, limits: dict) -> str:
    """Append a new key named `name` with `limits`; returns the key (shown once, never stored)."""
    if not is_name(name) or name in RESERVED:
        raise KeysToolError(f"bad name {name!r}: letters, digits, '.', '_', '-', at most 64, "
                            f"not {' or '.join(sorted(RESERVED))}")
    text, lines = read_lines(path)
    if any(line.name == name for line in lines):
        raise KeysToolError(f"{path} already has a key named {name}")
    key = new_key()
    line = KeyLine(name, key_hash(key), limits).text()
    parse_keys(line, "the new line")  # the limits pass the daemon's own checks
    separator = "" if not text or text.endswith("\n") else "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(f"{separator}{line}\n")
    return key


def remove(path: Path, name: str) -> None:
    """Rewrite the file without the key named `name` (same mode and owner; comments kept)."""
    text, lines = read_lines(path)
    if not any(line.name == name for line in lines):
        raise KeysToolError(f"{path} has no key named {name}")
    kept = [raw for raw in text.splitlines(keepends=True) if raw.split()[:1] != [name]]
    _replace(path, "".join(kept))


def _replace(path: Path, text: str) -> None:
    """Write `text` to a new file beside `path` and rename it over `path`: a daemon reloading
    meanwhile reads the old file or the new one, never half of one."""
    status = path.stat()
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, status.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(temporary, status.st_uid, status.st_gid)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def listing(path: Path) -> str:
    """One line per key: its name and the limits it sets (the others are [auth]'s defaults)."""
    _, lines = read_lines(path)
    rows = [f"{line.name}\t" + (" ".join(f"{k}={v}" for k, v in line.limits.items()) or "(defaults)")
            for line in lines]
    return "\n".join(rows) if rows else f"no keys in {path}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="inferd-keys", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    added = commands.add_parser("add", help="make a new key, print it once, append its hash")
    added.add_argument("name")
    for flag, kind in LIMIT_PARSERS.items():
        added.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, help=f"this key's {flag}")
    commands.add_parser("list", help="names and limits").set_defaults(name=None)
    commands.add_parser("remove", help="drop a key (refused from the daemon's next reload)").add_argument("name")
    for command in commands.choices.values():
        command.add_argument("--file", default=DEFAULT_FILE, help=f"the keys file (default {DEFAULT_FILE})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = Path(args.file)
    try:
        if args.command == "add":
            limits = {flag: getattr(args, flag) for flag in LIMIT_PARSERS if getattr(args, flag) is not None}
            key = add(path, args.name, limits)
            print(key)
            print(f"added {args.name} to {path}; this key is shown once. Reload inferd to use it.", file=sys.stderr)
        elif args.command == "remove":
            remove(path, args.name)
            print(f"removed {args.name} from {path}; reload inferd to refuse it.", file=sys.stderr)
        else:
            print(listing(path))
    except (KeysToolError, KeysFileError) as exc:
        print(f"inferd-keys: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"inferd-keys: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
