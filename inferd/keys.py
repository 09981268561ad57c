"""API keys and rate limits: the keys file, key hashes, token buckets, and the access rules of
the inference routes (who may call them, how often). Knows no HTTP: a refusal is an error that
carries its status and headers.

The keys file (`inferd-keys` writes it): one key per line,
    NAME sha256:HEX [rate=R] [burst=B] [images_rate=R] [images_burst=B]
blank lines and lines starting with # are ignored; limits left out take [auth]'s defaults.
A key is 256 random bits (`new_key`), so one SHA-256 stores it safely: there is no dictionary to
try and 2^256 keys to search, and a slow hash (scrypt, PBKDF2) would buy nothing but cost CPU on
every request, which anyone sending made-up keys could then spend at will.

Time is `time.monotonic` only: a wall-clock step never fills or drains a bucket.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import re
import secrets
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from . import files
from .config import ConfigError
from .names import client_address, is_name

log = logging.getLogger(__name__)

KEY_PREFIX = "inferd_"
HASH = re.compile(r"sha256:([0-9a-f]{64})\Z")
UNKNOWN, ANONYMOUS = "unknown", "anonymous"  # metric names of callers without a key of the file
RESERVED = frozenset({UNKNOWN, ANONYMOUS})
MAX_ADDRESSES = 4096  # per-address callers kept for anonymous clients (AddressTable)
REALM = 'Bearer realm="inferd"'


class KeysFileError(ConfigError):
    """The keys file cannot be used; one problem per line, each naming the file and line."""


class Unauthorized(PermissionError):
    """No key, or one the keys file does not hold (RFC 6750's invalid_token)."""

    http_status = 401

    def __init__(self, presented: bool):
        super().__init__("a valid API key is required (Authorization: Bearer <key>, or X-API-Key)")
        self.headers = {"WWW-Authenticate": REALM + (', error="invalid_token"' if presented else "")}
        self.caller = UNKNOWN


class Limited(RuntimeError):
    """Beyond a key's requests or images per second: 429 with Retry-After (whole seconds until
    enough tokens are there) and the RateLimit-* fields of the bucket that refused."""

    http_status = 429

    def __init__(self, caller: str, what: str, wait: float, limit: int, remaining: int, reset: float):
        super().__init__(f"rate limit of {what} exceeded; retry in {wait:.2f} s")
        self.caller = caller
        self.headers = {"Retry-After": str(max(1, math.ceil(wait))), "RateLimit-Limit": str(limit),
                        "RateLimit-Remaining": str(remaining), "RateLimit-Reset": str(max(1, math.ceil(reset)))}


class TooManyImages(ValueError):
    """More images in one request than the key's images_burst: no wait would ever admit it."""

    http_status = 413

    def __init__(self, caller: str, count: int, burst: int):
        super().__init__(f"{count} images in one request; this key may send at most {burst} at once")
        self.caller = caller


# -- keys and the keys file ------------------------------------------------------------------------

def new_key() -> str:
    """A new random key: the prefix (so that secret scanners can spot one) and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    """What the keys file holds of a key: "sha256:<hex>"."""
    return "sha256:" + _digest(key).hex()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "replace")).digest()


@dataclass(frozen=True)
class Limits:
    rate: float = 0.0  # requests per second; 0: no limit
    burst: int = 10
    images_rate: float = 0.0  # images per second; 0: no limit
    images_burst: int = 32


LIMIT_PARSERS: dict[str, Callable[[str], float]] = {
    "rate": float, "burst": int, "images_rate": float, "images_burst": int}


@dataclass(frozen=True)
class KeyLine:
    """One line of the keys file: a name, its key's hash, the limits it sets (the rest default)."""

    name: str
    hash: str
    limits: dict

    def text(self) -> str:
        return " ".join([self.name, self.hash, *(f"{k}={v}" for k, v in self.limits.items())])


@dataclass(frozen=True)
class Key:
    name: str
    digest: bytes
    limits: Limits


def parse_keys(text: str, source: str) -> list[KeyLine]:
    """Every key line of a keys file; raises KeysFileError listing every problem."""
    lines, problems = [], []
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        try:
            lines.append(_key_line(words))
        except ValueError as exc:
            problems.append(f"{source}:{number}: {exc}")
    problems += _duplicates(lines, source)
    if problems:
        raise KeysFileError(problems)
    return lines


def _key_line(words: list[str]) -> KeyLine:
    if len(words) < 2:
        raise ValueError("expected NAME sha256:HEX [rate=R] [burst=B] [images_rate=R] [images_burst=B]")
    name, digest, *options = words
    if not is_name(name) or name in RESERVED:
        raise ValueError(f"bad key name {name!r}: letters, digits, '.', '_', '-' (not {' or '.join(sorted(RESERVED))})")
    if not HASH.match(digest):
        raise ValueError(f"key {name}: the hash must be sha256: and 64 lowercase hex digits (see inferd-keys)")
    return KeyLine(name, digest, dict(_limit(option) for option in options))


def _limit(option: str) -> tuple[str, float]:
    key, _, text = option.partition("=")
    if key not in LIMIT_PARSERS:
        raise ValueError(f"unknown limit {key!r}: choose from {', '.join(LIMIT_PARSERS)}")
    try:
        value = LIMIT_PARSERS[key](text)
    except ValueError:
        raise ValueError(f"{key} = {text!r} is not a number") from None
    if not (value >= 1 if key.endswith("burst") else value >= 0) or math.isinf(value):
        raise ValueError(f"{key} = {text!r}: rates are >= 0 (0: no limit), bursts >= 1")
    return key, value


def _duplicates(lines: list[KeyLine], source: str) -> list[str]:
    problems, names, hashes = [], set(), set()
    for line in lines:
        if line.name in names:
            problems.append(f"{source}: key name {line.name} appears twice")
        if line.hash in hashes:
            problems.append(f"{source}: key {line.name} has the same hash as another key")
        names.add(line.name)
        hashes.add(line.hash)
    return problems


def load_keys(path: Path, defaults: Limits) -> list[Key]:
    """The keys of the file at `path`, limits resolved against `defaults`. Raises KeysFileError;
    logs a warning when the file is readable by everyone."""
    try:
        text = files.read_text(path, devices=True)  # /dev/null: no keys, said loudly below
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError([f"{path}: cannot read the keys file: {exc}"]) from None
    if stat.S_ISREG(mode) and mode & 0o004:
        log.warning("%s is readable by every user (mode %o): chmod o-r it", path, mode & 0o777)
    return [Key(line.name, bytes.fromhex(line.hash[len("sha256:"):]), replace(defaults, **line.limits))
            for line in parse_keys(text, str(path))]


def no_keys_warnings(config, keys: list[Key] | None) -> list[str]:
    """What to say loudly when a keys file holds no key (empty, comments only, /dev/null): keys
    are on, so every inference request is refused, which is right but rarely meant."""
    if keys is None or keys:
        return []
    return [f"{config.keys_path()} holds no keys: every inference request is refused (401) until one is added"]


def configured_keys(config) -> list[Key] | None:
    """The keys of a Config's [auth] keys_file, its defaults applied; None when keys are off.
    Raises KeysFileError."""
    path = config.keys_path()
    if path is None:
        return None
    auth = config.auth
    return load_keys(path, Limits(auth.rate, auth.burst, auth.images_rate, auth.images_burst))


# -- token buckets ---------------------------------------------------------------------------------

class TokenBucket:
    """`capacity` tokens, refilled at `rate` per second, on the monotonic clock `clock`."""

    def __init__(self, rate: float, capacity: int, clock: Callable[[], float]):
        self.rate, self.capacity, self._clock = rate, capacity, clock
        self._tokens, self._at = float(capacity), clock()
        self._lock = threading.Lock()

    def take(self, count: int) -> float:
        """Take `count` tokens: 0.0 when taken, else the seconds until there are enough (nothing
        is taken then)."""
        with self._lock:
            self._refill()
            if self._tokens >= count:
                self._tokens -= count
                return 0.0
            return (count - self._tokens) / self.rate

    def state(self) -> tuple[int, float]:
        """(whole tokens left, seconds until the bucket is full)."""
        with self._lock:
            self._refill()
            return int(self._tokens), (self.capacity - self._tokens) / self.rate

    def until_full(self) -> float:
        """Seconds until the bucket is full again; 0.0 when it is."""
        return self.state()[1]

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = now


class Caller:
    """Who an admitted request is (a key's name, or "anonymous"), with its buckets."""

    def __init__(self, name: str, limits: Limits, clock: Callable[[], float], observer=None):
        self.name, self.limits, self._observer = name, limits, observer
        self._requests = TokenBucket(limits.rate, limits.burst, clock) if limits.rate else None
        self._images = TokenBucket(limits.images_rate, limits.images_burst, clock) if limits.images_rate else None

    def __str__(self) -> str:
        return self.name

    def admit(self) -> "Caller":
        """Charge one request; raises Limited."""
        self._charge(self._requests, 1, "requests")
        self._observe("ok")
        return self

    def charge_images(self, count: int) -> None:
        """Charge `count` images of one request; raises TooManyImages (413) or Limited (429)."""
        bucket = self._images
        if bucket is not None and count > bucket.capacity:
            self._observe("limited")
            raise TooManyImages(self.name, count, bucket.capacity)
        self._charge(bucket, count, "images")
        if self._observer is not None:
            self._observer.observe_images(self.name, count)

    def _charge(self, bucket: TokenBucket | None, count: int, what: str) -> None:
        if bucket is None or count == 0:
            return
        wait = bucket.take(count)
        if wait:
            self._observe("limited")
            remaining, reset = bucket.state()
            raise Limited(self.name, f"{bucket.rate:g} {what} per second", wait, bucket.capacity, remaining, reset)

    def _observe(self, result: str) -> None:
        if self._observer is not None:
            self._observer.observe(self.name, result)

    def until_rested(self) -> float:
        """Seconds until every bucket of this caller is full again (0.0: a fresh caller would be
        the same, so forgetting it gives nothing away)."""
        return max((bucket.until_full() for bucket in (self._requests, self._images) if bucket is not None),
                   default=0.0)


# -- the rules of the inference routes ------------------------------------------------------------

@dataclass(frozen=True)
class _Rules:
    keys: tuple[tuple[Key, Caller], ...] | None  # None: keys are off
    anonymous: Limits
    ipv6_prefix: int = 64


class Access:
    """Admits callers of the inference routes. With keys (a keys file): the caller of a key it
    holds, charged one request; 401 otherwise. Without keys: anyone; with an anonymous_rate,
    charged per client address (AddressTable). `update` swaps in new settings and keys on reload,
    keeping the buckets of keys, and of addresses, whose limits did not change. `observer`:
    metrics.KeyMetrics or None."""

    def __init__(self, settings, keys: list[Key] | None, observer=None, clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = MAX_ADDRESSES):
        self._observer, self._clock, self._max_addresses = observer, clock, max_addresses
        self._rules = _Rules(None, Limits())
        self._addresses = AddressTable(Limits(), max_addresses, clock, observer)
        self.update(settings, keys)

    def update(self, settings, keys: list[Key] | None) -> None:
        """`settings`: the [auth] section; `keys`: None when keys are off."""
        old = dict(self._rules.keys or ())
        held = None if keys is None else tuple(
            (key, old.get(key) or Caller(key.name, key.limits, self._clock, self._observer)) for key in keys)
        anonymous = Limits(settings.anonymous_rate, settings.burst, settings.images_rate, settings.images_burst)
        if anonymous != self._addresses.limits:
            self._addresses = AddressTable(anonymous, self._max_addresses, self._clock, self._observer)
        # One assignment: a request sees the old rules or the new.
        self._rules = _Rules(held, anonymous, settings.anonymous_ipv6_prefix)
        if self._observer is not None:
            names = [key.name for key, _ in held] + [UNKNOWN] if held is not None else (
                [ANONYMOUS] if anonymous.rate else [])
            self._observer.install(names)

    def admit(self, presented: str | None, address: str) -> Caller | None:
        """The caller of a request that presented key `presented` (None: none) from `address`,
        charged one request; None when no rule applies. Raises Unauthorized (401), Limited (429)."""
        rules = self._rules
        if rules.keys is not None:
            return self._keyed(rules.keys, presented).admit()
        if rules.anonymous.rate:
            return self._addresses.caller(client_group(address, rules.ipv6_prefix)).admit()
        return None

    def _keyed(self, keys, presented: str | None) -> Caller:
        """The caller of the key, compared in constant time against every key held."""
        digest = _digest(presented or "")
        found = None
        for key, caller in keys:
            if hmac.compare_digest(key.digest, digest):
                found = caller
        if found is None or not presented:
            if self._observer is not None:
                self._observer.observe(UNKNOWN, "unauthorized")
            raise Unauthorized(presented=bool(presented))
        return found


def client_group(address: str, ipv6_prefix: int) -> str:
    """What one anonymous bucket stands for: an IPv4 address, or the IPv6 network of `ipv6_prefix`
    bits around an IPv6 one (a client given a /64 has 2^64 addresses to choose from). An IPv4
    address mapped into IPv6 is that IPv4 address; text that is not an address stands for itself."""
    parsed = client_address(address)
    if parsed is None:
        return address
    if parsed.version == 4:
        return str(parsed)
    return str(ipaddress.ip_network(f"{parsed}/{ipv6_prefix}", strict=False))


class AddressTable:
    """The callers of anonymous clients by address group, at most `capacity` of them.

    Forgetting a client that spent its tokens would hand it a fresh bucket (4,100 requests from
    other loopback addresses once reset 127.0.0.1's limit), so only a caller whose buckets are
    full again makes room, the least recently seen first: it loses nothing by leaving. When none
    has rested, newcomers share one overflow caller with the same limits until one has, so that a
    flood of new addresses gets one bucket's worth between them and the limited stay limited.
    Memory: `capacity` callers and the overflow one (tests/service/test_keys.py measures a full table).
    """

    def __init__(self, limits: Limits, capacity: int, clock: Callable[[], float], observer=None):
        self.limits, self.capacity, self._clock, self._observer = limits, capacity, clock, observer
        self._lock = threading.Lock()
        self._callers: OrderedDict[str, Caller] = OrderedDict()  # least recently seen first
        self._overflow = self._new()
        self._none_rested_until = 0.0  # no caller can have rested before this (clock time)

    def caller(self, group: str) -> Caller:
        with self._lock:
            caller = self._callers.get(group)
            if caller is not None:
                self._callers.move_to_end(group)
                return caller
            if len(self._callers) >= self.capacity and not self._make_room():
                return self._overflow
            caller = self._callers[group] = self._new()
            return caller

    def __len__(self) -> int:
        return len(self._callers)

    def _new(self) -> Caller:
        return Caller(ANONYMOUS, self.limits, self._clock, self._observer)

    def _make_room(self) -> bool:
        """Forget the least recently seen caller that has rested; False when none has. A scan that
        finds none is not repeated before the soonest of them can have rested."""
        now = self._clock()
        if now < self._none_rested_until:
            return False
        soonest = math.inf
        for group, caller in self._callers.items():
            wait = caller.until_rested()
            if wait <= 0.0:
                del self._callers[group]
                return True
            soonest = min(soonest, wait)
        self._none_rested_until = now + soonest
        return False
