"""A fleet under a real systemd 252: three inferd@ instances behind Debian's HAProxy 2.6 running
systemd/haproxy/inferd.cfg, with 8 keep-alive clients: a rolling reload and a rolling restart
(systemd/inferd-roll), kill -9 and systemctl stop of one instance, all without a failed request;
HTTP desync attempts through HAProxy never reach an instance as two requests.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import time

import pytest
import requests

from tests.support import model_build
from tests.system.fleet import BACKEND, HAPROXY_SOCKET, INSTANCES, SHIPPED_PORTS, Fleet, Load, free_ports
from tests.system.systemd_machine import PREFIX, REPO

pytestmark = pytest.mark.system

EXPOSURE_LIMIT = 0.9  # what the shipped units rate under systemd 252; a new setting must not raise it
ROLL = f"{PREFIX}/bin/inferd-roll"
WARM_UP = 40  # answers before a fault, and after it, so that it happens under load


@pytest.fixture(scope="module")
def models(machine, tiny_model_dir, tmp_path_factory) -> dict[str, str]:
    """Two fast models with different names and weights, inside the machine."""
    other = tmp_path_factory.mktemp("tiny-12")
    model_build.build_model("tiny", other, levels=12)
    return {"tiny-10": machine.copy_model(tiny_model_dir, "fleet-tiny-10"),
            "tiny-12": machine.copy_model(other, "fleet-tiny-12")}


@pytest.fixture(scope="module")
def started_fleet(machine, models):
    fleet = Fleet(machine, free_ports(SHIPPED_PORTS))
    try:
        fleet.start(models["tiny-10"])
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def fleet(started_fleet):
    """The fleet with every instance serving and UP in HAProxy; its journal printed on failure."""
    started_fleet.ensure_running()
    started = time.time()
    yield started_fleet
    print(started_fleet.journal(since=started - 1)[-30000:])


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A real photo, small enough (about 2 KB) for HAProxy to retry it (tune.bufsize)."""
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).resize((64, 64)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def warnings(fleet: Fleet) -> dict[str, float]:
    """HAProxy's retry and redispatch counters of the backend (since HAProxy started)."""
    return {name: fleet.haproxy_value(f"haproxy_backend_{name}_warnings_total", proxy=BACKEND)
            for name in ("retry", "redispatch")}


def retries_since(fleet: Fleet, before: dict[str, float]) -> str:
    now = warnings(fleet)
    return (f"HAProxy retried {now['retry'] - before['retry']:.0f}, "
            f"redispatched {now['redispatch'] - before['redispatch']:.0f}")


def test_units_and_config_are_hardened_and_valid(fleet, tmp_path):
    """inferd@.service keeps inferd.service's hardening (exposure <= 0.9), each instance runs as
    its own dynamic user, HAProxy accepts the config, and /admin/* is not reachable through it."""
    template = (REPO / "systemd" / "inferd@.service").read_text()
    single = (REPO / "systemd" / "inferd.service").read_text()

    def hardening(text: str) -> list[str]:
        block = text[text.index("\nDynamicUser=yes"):text.index("[Install]")]
        return [line for line in block.splitlines() if line and not line.startswith("#")]

    assert hardening(template) == hardening(single)
    (tmp_path / "inferd@a.service").write_text(template)
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                               str(tmp_path / "inferd@a.service")], capture_output=True, text=True)
    exposure = float(re.search(r"Overall exposure level for inferd@a.service: ([\d.]+)", security.stdout).group(1))
    assert exposure <= EXPOSURE_LIMIT, security.stdout
    verify = fleet.machine.run("systemd-analyze", "verify", "inferd@a.service", check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    check = fleet.machine.run("haproxy", "-c", "-f", "/etc/haproxy/haproxy.cfg", check=False)
    assert check.returncode == 0, check.stdout + check.stderr

    uids = set()
    for name in INSTANCES:
        pid = fleet.unit(name, "MainPID")["MainPID"]
        status = fleet.machine.run("cat", f"/proc/{pid}/status").stdout
        uids.add(int(re.search(r"^Uid:\t(\d+)", status, re.M).group(1)))
        assert re.search(r"^NoNewPrivs:\t1$", status, re.M)
    assert len(uids) == 3 and all(61184 <= uid <= 65519 for uid in uids), uids

    assert requests.post(f"{fleet.url}/admin/reload", timeout=10).status_code == 403
    assert requests.get(f"{fleet.url}//admin/reload", timeout=10).status_code == 403
    assert requests.get(f"{fleet.url}/health", timeout=10).json()["status"] == "ok"
    print(f"inferd@.service exposure {exposure}; instance uids {sorted(uids)}")


def test_rolling_reload_under_load(fleet, models, photo):
    """inferd-roll reload moves every instance to a new model, one at a time, each serving it
    before the next: no request fails, and every request sent after the roll gets the new model."""
    fleet.write_configs(models["tiny-12"])
    with Load(fleet.url, photo) as load:
        load.wait_for(WARM_UP)
        started = time.monotonic()
        roll = fleet.machine.run(ROLL, "reload", *INSTANCES, timeout=300)
        ended = time.monotonic()
        load.wait_for(WARM_UP, after=ended)
    print(roll.stdout, end="")
    assert load.failures() == []
    after = [o.model for o in load.outcomes if o.sent > ended]
    assert set(after) == {"tiny-12"}, set(after)
    assert {o.model for o in load.outcomes if o.done < started} == {"tiny-10"}
    assert [fleet.unit(name, "NRestarts")["NRestarts"] for name in INSTANCES] == ["0"] * 3
    print(f"rolling reload: {ended - started:.2f}s for 3 instances; {load.summary()}; "
          f"{len(after)} answers after the roll, all from tiny-12")
    fleet.write_configs(models["tiny-10"])
    fleet.machine.run(ROLL, "reload", timeout=300)  # every active instance: back to the first model


def test_rolling_reload_stops_at_the_first_instance_that_fails(fleet, models, tiny_model_dir):
    """A model that does not load: inferd@a keeps its old model, the roll stops there and exits 1,
    b and c are not even asked to reload."""
    broken = fleet.machine.copy_model(tiny_model_dir, "fleet-broken")
    fleet.machine.write(f"{broken}/model.onnx", b"this is not an ONNX file\n")

    def state() -> dict[str, tuple]:
        return {name: (requests.get(f"{fleet.instance_url(name)}/health", timeout=10).json()["model"]["sha256"],
                       json.loads(fleet.machine.run("cat", f"/run/inferd-{name}/reload-status.json").stdout))
                for name in INSTANCES}

    before = state()
    fleet.write_configs(broken)
    try:
        roll = fleet.machine.run(ROLL, "reload", *INSTANCES, check=False, timeout=300)
    finally:
        fleet.write_configs(models["tiny-10"])
    after = state()
    assert roll.returncode == 1, roll
    assert roll.stdout == "" and "reload of inferd@a failed, roll stopped" in roll.stderr, roll.stderr
    assert {name: sha for name, (sha, _) in after.items()} == {name: sha for name, (sha, _) in before.items()}
    assert after["a"][1]["ok"] is False and after["a"][1]["generation"] == before["a"][1]["generation"] + 1
    assert (after["b"], after["c"]) == (before["b"], before["c"])
    print(roll.stderr, end="")


def test_rolling_restart_under_load(fleet, photo):
    """inferd-roll restart with HAProxy's admin socket: drain, restart, ready, one at a time."""
    pids = {name: fleet.unit(name, "MainPID")["MainPID"] for name in INSTANCES}
    counters = warnings(fleet)
    with Load(fleet.url, photo) as load:
        load.wait_for(WARM_UP)
        started = time.monotonic()
        roll = fleet.machine.run(ROLL, "restart", "--haproxy-socket", HAPROXY_SOCKET, timeout=300)
        ended = time.monotonic()
        load.wait_for(WARM_UP, after=ended)
    print(roll.stdout, end="")
    assert load.failures() == []
    assert all(fleet.unit(name, "MainPID")["MainPID"] != pids[name] for name in INSTANCES)
    assert fleet.server_states() == {name: "UP" for name in INSTANCES}
    print(f"rolling restart: {ended - started:.2f}s for 3 instances; {load.summary()}; "
          f"{retries_since(fleet, counters)}")


def test_kill_9_of_one_instance_loses_no_request(fleet, photo):
    """SIGKILL: HAProxy retries what the dead instance held or refused on another server; systemd
    restarts the instance, HAProxy's checks bring it back and it serves again."""
    before = fleet.unit("b", "MainPID", "NRestarts")
    counters = warnings(fleet)
    with Load(fleet.url, photo) as load:
        load.wait_for(WARM_UP)
        killed = time.monotonic()
        fleet.machine.run("kill", "-9", before["MainPID"])
        fleet.machine.wait(lambda: fleet.unit("b", "NRestarts", "ActiveState") ==
                           {"NRestarts": str(int(before["NRestarts"]) + 1), "ActiveState": "active"},
                           "systemd to restart inferd@b", timeout=30)
        restarted = time.monotonic()
        fleet.wait_status(["b"], "UP")
        rejoined = time.monotonic()
        served = fleet.requests_by_route("b")["/infer"]
        load.wait_for(WARM_UP, after=rejoined)
        fleet.machine.wait(lambda: fleet.requests_by_route("b")["/infer"] > served,
                           "inferd@b to get requests again", timeout=30)
    assert load.failures() == []
    assert fleet.unit("b", "MainPID")["MainPID"] != before["MainPID"]
    print(f"kill -9: restarted by systemd after {restarted - killed:.2f}s, UP in HAProxy after "
          f"{rejoined - killed:.2f}s; {load.summary()}; {retries_since(fleet, counters)}")


def test_stop_of_one_instance_drains_and_loses_no_request(fleet, photo):
    """systemctl stop: the instance drains and exits 0, HAProxy routes around it, no request fails;
    started again, it rejoins."""
    counters = warnings(fleet)
    with Load(fleet.url, photo) as load:
        load.wait_for(WARM_UP)
        started = time.monotonic()
        fleet.machine.systemctl("stop", "inferd@c.service")
        stopped = time.monotonic()
        fleet.wait_status(["c"], "DOWN")
        down = time.monotonic()
        load.wait_for(WARM_UP, after=down)  # served by a and b alone
        fleet.machine.systemctl("start", "inferd@c.service")
        fleet.wait_status(["c"], "UP")
        load.wait_for(WARM_UP, after=time.monotonic())
    assert fleet.unit("c", "Result", "NRestarts") == {"Result": "success", "NRestarts": "0"}
    assert load.failures() == []
    print(f"systemctl stop: {stopped - started:.2f}s, DOWN in HAProxy after {down - started:.2f}s; "
          f"{load.summary()}; {retries_since(fleet, counters)}")


# Each sends one request whose body, read another way, holds a second request: POST /admin/reload,
# which HAProxy never forwards (403) and so can reach an instance only by desynchronisation.
SMUGGLED = b"POST /admin/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
HEAD = b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


DESYNC = {
    "CL.TE": HEAD + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % (5 + len(SMUGGLED))
             + b"0\r\n\r\n" + SMUGGLED,
    "TE.CL": HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" + chunk(SMUGGLED),
    "TE.TE xchunked": HEAD + b"Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n" + chunk(SMUGGLED),
    "TE.TE space before colon": HEAD + b"Transfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n" + chunk(SMUGGLED),
    "TE.TE tab": HEAD + b"Transfer-Encoding:\tchunked\r\nContent-Length: 4\r\n\r\n" + chunk(SMUGGLED),
    "TE.TE two headers": HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n"
                         b"Content-Length: 4\r\n\r\n" + chunk(SMUGGLED),
    "TE.TE list": HEAD + b"Transfer-Encoding: chunked, identity\r\nContent-Length: 4\r\n\r\n" + chunk(SMUGGLED),
    "TE.TE obs-fold": HEAD + b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 4\r\n\r\n" + chunk(SMUGGLED),
    "TE.TE upper case": HEAD + b"Transfer-Encoding: CHUNKED\r\nContent-Length: 4\r\n\r\n" + chunk(SMUGGLED),
    "duplicate Content-Length": HEAD + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED)
                                + SMUGGLED,
    "Content-Length list": HEAD + b"Content-Length: 0, %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
    "Content-Length +": HEAD + b"Content-Length: +%d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
}


def send_raw(port: int, payload: bytes) -> list[str]:
    """Send `payload` on a new connection; the status lines that come back until the connection
    closes or stays silent for a second."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.sendall(payload)
        try:
            while data := sock.recv(65536):
                received += data
        except (socket.timeout, ConnectionResetError):
            pass
    return [line.decode() for line in re.findall(rb"HTTP/1\.[01] \d{3}[^\r\n]*", received)]


def test_desync_attempts_never_reach_an_instance_as_two_requests(fleet):
    """CL.TE, TE.CL, TE.TE obfuscations and conflicting Content-Lengths, sent raw through HAProxy:
    no instance ever counts a POST /admin/reload, and the instances count no more requests than
    HAProxy forwarded."""
    answers = {}
    for name, payload in DESYNC.items():
        routes_before = fleet.routes_total()
        forwarded_before = fleet.haproxy_value("haproxy_backend_http_requests_total", proxy=BACKEND)
        answers[name] = send_raw(fleet.ports["frontend"], payload)
        routes_after = fleet.routes_total()
        forwarded = fleet.haproxy_value("haproxy_backend_http_requests_total", proxy=BACKEND) - forwarded_before
        seen = {route: routes_after[route] - routes_before[route] for route in routes_after
                if route not in ("/health", "/metrics") and routes_after[route] != routes_before[route]}
        assert "/admin/reload" not in seen and "other" not in seen, (name, seen, answers[name])
        assert sum(seen.values()) <= forwarded, (name, seen, forwarded, answers[name])
        print(f"{name}: client got {answers[name] or 'no answer'}; HAProxy forwarded {forwarded:.0f}, "
              f"instances counted {seen or 'nothing'}")
    assert requests.get(f"{fleet.url}/health", timeout=10).status_code == 200
