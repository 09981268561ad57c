"""Three inferd@ instances behind Debian's HAProxy 2.6 inside the booted systemd (used by
tests/system/test_fleet.py), and the load of keep-alive clients that the fleet tests run.

The instances are the shipped inferd@.service with configs in /etc/inferd/instances/NAME.conf;
HAProxy is Debian's haproxy.service running systemd/haproxy/inferd.cfg with only its ports changed.
Everything listens on the host's loopback (the machine shares the host's network namespace).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.system.systemd_machine import REPO, Machine, config_text

INSTANCES = ("a", "b", "c")
BACKEND = "inferd"
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
HAPROXY_SOCKET = "/run/haproxy/admin.sock"
SHIPPED_PORTS = {"frontend": 8000, "a": 8001, "b": 8002, "c": 8003, "stats": 8404}

CLIENTS = 8
MAX_REQUESTS = 20000  # per client: every load loop is bounded in count and in time
MAX_SECONDS = 120.0


def free_ports(names) -> dict[str, int]:
    """A block of loopback ports free at this moment, from a range derived from this process.

    HAProxy's config names fixed ports, so these cannot be port 0; a port taken by someone else
    between this check and the bind makes that service fail to start, with the reason in its log.
    """
    names = list(names)
    base = 30000 + (os.getpid() % 1000) * 8
    for start in range(base, base + 8 * 64, 8):
        probes = []
        try:
            for offset in range(len(names)):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("127.0.0.1", start + offset))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return {name: start + offset for offset, name in enumerate(names)}
    raise AssertionError(f"no {len(names)} free loopback ports from {base}")


def haproxy_config(ports: dict[str, int]) -> str:
    """The shipped systemd/haproxy/inferd.cfg with its ports replaced, and nothing else."""
    text = (REPO / "systemd" / "haproxy" / "inferd.cfg").read_text()
    for name, shipped in SHIPPED_PORTS.items():
        old = f"127.0.0.1:{shipped}\n"
        assert text.count(old) == 1, f"the shipped HAProxy config no longer has one {old!r}"
        text = text.replace(old, f"127.0.0.1:{ports[name]}\n")
    return text


def metrics(url: str) -> list:
    response = requests.get(url, headers={"Accept": "text/plain; version=0.0.4"}, timeout=10)
    response.raise_for_status()
    return list(text_string_to_metric_families(response.text))


@dataclass
class Fleet:
    machine: Machine
    ports: dict[str, int]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['frontend']}"

    def instance_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def write_configs(self, model: str) -> None:
        """Every instance's config: the installed one with its own port and `model`."""
        for name in INSTANCES:
            text = config_text(self.machine.test_config, server={"port": self.ports[name]},
                               model={"path": model, "intra_op_threads": 1})
            self.machine.write(f"/etc/inferd/instances/{name}.conf", text)

    def start(self, model: str) -> None:
        self.write_configs(model)
        self.machine.write(HAPROXY_CFG, haproxy_config(self.ports))
        # What boot's systemd-tmpfiles-setup (masked in the test machine) does for Debian's haproxy.
        self.machine.run("systemd-tmpfiles", "--create", "/usr/lib/tmpfiles.d/haproxy.conf")
        self.machine.systemctl("daemon-reload")
        self.machine.systemctl("start", *(f"inferd@{name}.service" for name in INSTANCES), "haproxy.service")
        self.wait_status(INSTANCES, "UP")

    def stop(self) -> None:
        units = [f"inferd@{name}.service" for name in INSTANCES] + ["haproxy.service"]
        self.machine.systemctl("stop", *units, check=False, timeout=60)
        self.machine.systemctl("reset-failed", *units, check=False)

    def ensure_running(self) -> None:
        """Every instance active and UP in HAProxy (a test may have stopped one)."""
        self.machine.systemctl("start", *(f"inferd@{name}.service" for name in INSTANCES))
        self.wait_status(INSTANCES, "UP")

    def unit(self, name: str, *props: str) -> dict[str, str]:
        return self.machine.show(f"inferd@{name}.service", *props)

    def haproxy_samples(self) -> list:
        return [sample for family in metrics(f"http://127.0.0.1:{self.ports['stats']}/metrics")
                for sample in family.samples]

    def haproxy_value(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.haproxy_samples()
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def server_states(self) -> dict[str, str]:
        """HAProxy's view of each server: UP, DOWN, MAINT, DRAIN, NOLB..."""
        return {s.labels["server"]: s.labels["state"] for s in self.haproxy_samples()
                if s.name == "haproxy_server_status" and s.labels.get("proxy") == BACKEND and s.value == 1}

    def wait_status(self, names, state: str, timeout: float = 30.0) -> None:
        self.machine.wait(lambda: all(self.server_states().get(name) == state for name in names),
                          f"HAProxy to see {names} {state}", timeout=timeout, interval=0.2)

    def requests_by_route(self, name: str) -> Counter:
        """inferd_http_requests_total of one instance, summed per route."""
        counts = Counter()
        for family in metrics(f"{self.instance_url(name)}/metrics"):
            for sample in family.samples:
                if sample.name == "inferd_http_requests_total":
                    counts[sample.labels["route"]] += sample.value
        return counts

    def routes_total(self) -> Counter:
        total = Counter()
        for name in INSTANCES:
            total.update(self.requests_by_route(name))
        return total

    def journal(self, since: float) -> str:
        """The instances' and HAProxy's journal since `since` (time.time()), without the lines of
        requests that were answered 200."""
        units = [arg for name in INSTANCES for arg in ("-u", f"inferd@{name}.service")]
        text = self.machine.journal(*units, "-u", "haproxy.service", "--since", f"@{since:.0f}")
        return "\n".join(line for line in text.splitlines()
                         if not re.search(r'inferd\.access: .* 200 |\] inferd inferd/\w+ [\d/]+ 200 ', line))


@dataclass
class Outcome:
    sent: float  # time.monotonic() when the request was sent, and when its answer came
    done: float
    status: int | str  # the HTTP status, or the exception a client got
    model: str | None


@dataclass
class Load:
    """CLIENTS keep-alive clients each POSTing `image` to `url`/infer, one request after another,
    until stopped (or MAX_REQUESTS each, or MAX_SECONDS)."""

    url: str
    image: bytes
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list = field(default_factory=list)

    def __enter__(self) -> "Load":
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _client(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        with requests.Session() as session:
            for _ in range(MAX_REQUESTS):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                sent = time.monotonic()
                try:
                    response = session.post(f"{self.url}/infer", timeout=30,
                                            files={"file": ("photo.jpg", self.image, "image/jpeg")})
                    model = response.json().get("model") if response.status_code == 200 else response.text[:200]
                    self.outcomes.append(Outcome(sent, time.monotonic(), response.status_code, model))
                except (requests.RequestException, ValueError) as exc:
                    self.outcomes.append(Outcome(sent, time.monotonic(), repr(exc), None))

    def wait_for(self, count: int, after: float = 0.0, timeout: float = 60.0) -> None:
        """Until `count` answers arrived to requests sent after `after` (a monotonic time)."""
        deadline = time.monotonic() + timeout
        while sum(1 for o in self.outcomes if o.sent > after) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.outcomes)} answers after {timeout}s")
            time.sleep(0.05)

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def summary(self) -> str:
        statuses = Counter(str(o.status) for o in self.outcomes)
        return f"{len(self.outcomes)} requests from {CLIENTS} clients, {len(self.failures())} failed {dict(statuses)}"
