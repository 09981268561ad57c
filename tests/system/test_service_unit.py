"""The shipped units under a real systemd 252: socket activation, the hardened unit serving real
predictions as a DynamicUser, `systemd-analyze` verdicts, and install.sh / uninstall.sh.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading

import pytest
import requests

from tests.support import EXPECTED_TOP1
from tests.system.systemd_machine import PREFIX, REPO, dropin

pytestmark = pytest.mark.system

EXPOSURE_LIMIT = 0.9  # what the shipped units rate under systemd 252; a new setting must not raise it
CAT = EXPECTED_TOP1["cat.jpg"]


def classify(url: str, image: bytes) -> requests.Response:
    return requests.post(f"{url}/infer", files={"file": ("cat.jpg", image, "image/jpeg")}, timeout=60)


def start_socket(inferd) -> int:
    """Start inferd.socket on a free port of a range derived from this process, moving on when
    systemd cannot bind one (in use). systemd refuses port 0, so the test cannot ask for any port."""
    base = 20000 + os.getpid() % 20000
    for port in range(base, base + 20):
        dropin(inferd, "inferd.socket", f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n")
        if inferd.systemctl("start", "inferd.socket", check=False).returncode == 0:
            return port
        inferd.systemctl("reset-failed", "inferd.socket", check=False)
    raise AssertionError(f"inferd.socket could not bind any port in {base}..{base + 19}")


def test_socket_activation(inferd, images):
    """The first connection starts the service, which serves on fd 3; connections made while the
    service restarts wait in the socket's backlog instead of failing."""
    port = start_socket(inferd)
    url = f"http://127.0.0.1:{port}"
    assert inferd.show("inferd", "ActiveState")["ActiveState"] == "inactive"

    response = classify(url, images["cat.jpg"])  # starts inferd.service
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] in CAT
    props = inferd.show("inferd", "ActiveState", "MainPID", "TriggeredBy", "StatusText")
    assert props["ActiveState"] == "active" and "inferd.socket" in props["TriggeredBy"]
    assert props["StatusText"] == f"serving efficientnet-lite0 on 127.0.0.1:{port}"
    fd3 = inferd.run("readlink", f"/proc/{props['MainPID']}/fd/3").stdout
    assert fd3.startswith("socket:")
    inferd.unit_log("using 1 socket(s) passed by systemd")

    # A restart with clients connecting all the while: each new connection queues, none fails.
    stop, outcomes = threading.Event(), []

    def client():
        while not stop.is_set():
            try:
                outcomes.append(classify(url, images["cat.jpg"]).status_code)
            except requests.RequestException as exc:
                outcomes.append(repr(exc))

    clients = [threading.Thread(target=client) for _ in range(2)]
    for thread in clients:
        thread.start()
    inferd.wait(lambda: len(outcomes) >= 4, "requests before the restart", timeout=30)
    inferd.systemctl("restart", "inferd.service")
    count = len(outcomes)
    inferd.wait(lambda: len(outcomes) >= count + 4, "requests after the restart", timeout=30)
    stop.set()
    for thread in clients:
        thread.join(60)
    assert inferd.show("inferd", "MainPID")["MainPID"] != props["MainPID"]
    assert [o for o in outcomes if o != 200] == []
    print(f"socket activation: {len(outcomes)} requests across a restart, all 200")


def test_shipped_unit_is_hardened_verified_and_serves(inferd, images):
    installed = inferd.path("/etc/systemd/system/inferd.service").read_text()
    assert installed == (REPO / "systemd" / "inferd.service").read_text()  # default PREFIX: as shipped

    verify = inferd.run("systemd-analyze", "verify", "/etc/systemd/system/inferd.service",
                        "/etc/systemd/system/inferd.socket", check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")

    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                               str(REPO / "systemd" / "inferd.service")], capture_output=True, text=True)
    exposure = float(re.search(r"Overall exposure level for inferd.service: ([\d.]+)", security.stdout).group(1))
    print(f"systemd-analyze security --offline=yes: exposure {exposure}")
    assert exposure <= EXPOSURE_LIMIT, security.stdout

    inferd.systemctl("start", "inferd")
    url = inferd.url()
    response = classify(url, images["cat.jpg"])
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] in CAT  # MemoryDenyWriteExecute, seccomp: fine

    pid = inferd.show("inferd", "MainPID")["MainPID"]
    status = dict(line.split(":\t", 1) for line in inferd.run("cat", f"/proc/{pid}/status").stdout.splitlines())
    uid = int(status["Uid"].split()[0])
    assert 61184 <= uid <= 65519, f"not a DynamicUser uid: {uid}"
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    reload_status = inferd.run("cat", "/run/inferd/reload-status.json").stdout
    assert f'"pid": {pid}' in reload_status and '"generation": 1' in reload_status
    cached = inferd.run("ls", "/var/cache/private/inferd").stdout.split()  # CacheDirectory= under DynamicUser
    assert len(cached) == 1 and cached[0].endswith(".onnx"), cached  # the default model's optimised graph

    # IPAddressDeny=any is enforced (cgroup BPF): without the unit's IPAddressAllow=localhost, even
    # loopback clients are cut off; so is any connection the service would make beyond loopback.
    dropin(inferd, "inferd.service", "[Service]\nIPAddressAllow=\n")
    inferd.systemctl("restart", "inferd")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{inferd.url()}/health", timeout=3)


def test_install_is_idempotent_and_uninstall_reverses_it(inferd):
    """install.sh again: no change to an edited config; uninstall.sh with other directories removes
    what it installed and keeps an edited config (PURGE=1 removes that too)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}}
    config = inferd.path("/etc/inferd/inferd.conf")
    config.write_text(config.read_text() + "; edited by the operator\n")
    edited = config.read_text()
    again = inferd.run("sh", str(REPO / "systemd" / "install.sh"), env=env, timeout=600)
    assert "keeping existing /etc/inferd/inferd.conf" in again.stdout
    assert "is up to date" in again.stdout  # the model was not rebuilt
    assert config.read_text() == edited

    # A second installation elsewhere, then its removal; the session's installation is untouched.
    dirs = {"PREFIX": "/opt/inferd-other", "SYSCONFDIR": "/etc/inferd-other", "UNITDIR": "/run/inferd-units"}
    inferd.run("sh", str(REPO / "systemd" / "install.sh"), env={**env, **dirs}, timeout=600)
    unit = inferd.path("/run/inferd-units/inferd.service").read_text()
    assert "ExecStart=/opt/inferd-other/bin/inferd --config /etc/inferd-other/inferd.conf" in unit
    assert "/opt/inferd/" not in unit and "/etc/inferd/" not in unit
    other_config = inferd.path("/etc/inferd-other/inferd.conf")
    assert "path = /opt/inferd-other/models/efficientnet-lite0" in other_config.read_text()
    other_config.write_text(other_config.read_text() + "; edited\n")

    removed = inferd.run("sh", str(REPO / "systemd" / "uninstall.sh"), env={**env, **dirs})
    assert "kept /etc/inferd-other/inferd.conf" in removed.stdout
    assert not inferd.path("/opt/inferd-other").exists()
    assert not inferd.path("/run/inferd-units/inferd.service").exists()
    assert other_config.exists()
    inferd.run("sh", str(REPO / "systemd" / "uninstall.sh"), env={**env, **dirs, "PURGE": "1"})
    assert not inferd.path("/etc/inferd-other").exists()
    assert inferd.path(f"{PREFIX}/bin/inferd").exists()
