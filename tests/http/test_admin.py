"""/admin/*: the token, loopback only without one (from a real non-loopback address too), and
reloads that take nothing from the request and name no paths."""

from __future__ import annotations


import os
import shutil
import subprocess
import sys
import pytest
import requests
from inferd.http.errors import HTTPError
from inferd.routes.admin import authorize_admin, is_loopback
from tests.support import config_for, start_in_process


@pytest.fixture
def reloadable(serve, tiny_model_dir):
    """A server whose reloads run for real (on the stand-in main loop); calls are recorded."""
    calls = []
    config = config_for(tiny_model_dir, server={"admin_token": "s3cret-token"})

    def reload_model(*args, **kwargs):
        calls.append((args, kwargs))
        return srv.daemon.reload()

    srv = serve(config, reload_model=reload_model)
    srv.calls = calls
    return srv


def test_admin_token_required_with_bearer(reloadable):
    url = f"{reloadable.url}/admin/reload"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0LXRva2Vu"},
                    {"Authorization": "s3cret-token"}, {"Authorization": "Bearer s3cret-token-and-more"}):
        denied = requests.post(url, headers=headers, timeout=10)
        assert denied.status_code == 401, headers
        assert denied.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.post(f"{reloadable.url}/admin/other", timeout=10).status_code == 401
    assert reloadable.calls == []
    allowed = requests.post(url, headers={"Authorization": "bearer  s3cret-token "}, timeout=60)
    assert allowed.status_code == 200 and allowed.json()["message"] == "Model reloaded successfully"


def test_reload_takes_nothing_from_the_request(reloadable, tmp_path):
    answer = requests.post(f"{reloadable.url}/admin/reload?path=/etc&model=/tmp/evil",
                           json={"path": str(tmp_path), "model": "/tmp/evil.onnx"},
                           headers={"Authorization": "Bearer s3cret-token"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["model"]["name"] == "tiny-10"
    assert reloadable.calls == [((), {})]


def test_failed_reload_answer_names_no_paths(serve, tiny_model_dir):
    message = (f"{tiny_model_dir}/model.onnx: onnxruntime cannot load it: [ONNXRuntimeError] : 7 : "
               f"INVALID_PROTOBUF; see /etc/inferd/inferd.conf")
    srv = serve(config_for(tiny_model_dir), reload_model=lambda: (False, message))
    answer = requests.post(f"{srv.url}/admin/reload", timeout=10)
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert "previous model keeps serving" in error and "model.onnx: onnxruntime cannot load it" in error
    assert str(tiny_model_dir) not in error and "/etc" not in error and "inferd.conf" in error


@pytest.mark.parametrize("token, authorization, host, status", [
    ("", None, "127.0.0.1", None),
    ("", None, "127.8.9.10", None),
    ("", None, "::1", None),
    ("", None, "::ffff:127.0.0.1", None),
    ("", None, "10.1.2.3", 403),
    ("", None, "::ffff:10.1.2.3", 403),
    ("", None, "fe80::1%eth0", 403),
    ("", "Bearer anything", "192.0.2.7", 403),
    ("tok", None, "127.0.0.1", 401),
    ("tok", "Bearer tok", "10.1.2.3", None),
    ("tok", "Bearer tok2", "10.1.2.3", 401),
    ("tok", "Bearer", "10.1.2.3", 401),
    ("tok", "BEARER tok", "2001:db8::1", None),
])
def test_authorize_admin(token, authorization, host, status):
    if status is None:
        authorize_admin(token, authorization, host)
    else:
        with pytest.raises(HTTPError) as raised:
            authorize_admin(token, authorization, host)
        assert raised.value.http_status == status
        assert ("WWW-Authenticate" in raised.value.headers) == (status == 401)


NETNS_CLIENT = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
sock.sendall(sys.argv[3].encode().decode("unicode_escape").encode("latin-1"))
data = b""
while b"\\r\\n\\r\\n" not in data:
    chunk = sock.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.split(b"\\r\\n", 1)[0].decode())
"""


@pytest.fixture
def netns():
    """A network namespace joined to this one by a veth pair: (host-side address, run(argv)).

    Proves the loopback rule with a real non-loopback peer, without exposing a port to any
    real network: the server binds the host end of the veth only."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")
    name, tag = f"inferd-t{os.getpid()}", f"{os.getpid() % 200 + 20}"
    host_if, ns_if, host_ip, ns_ip = f"ifdh{tag}", f"ifdn{tag}", f"10.231.{tag}.1", f"10.231.{tag}.2"
    setup = [["ip", "netns", "add", name],
             ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", name],
             ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if], ["ip", "link", "set", host_if, "up"],
             ["ip", "-n", name, "addr", "add", f"{ns_ip}/30", "dev", ns_if],
             ["ip", "-n", name, "link", "set", ns_if, "up"]]
    try:
        for command in setup:
            result = subprocess.run(command, capture_output=True, text=True, timeout=10)
            if result.returncode != 0:
                pytest.skip(f"cannot set up a network namespace: {result.stderr.strip()}")

        def run(*argv: str) -> str:
            return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True,
                                  timeout=30, check=True).stdout.strip()
        yield host_ip, run
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def test_admin_from_a_real_non_loopback_address(netns, tiny_model_dir):
    host_ip, run = netns
    for token, expected in (("", "403"), ("tok", "401")):
        config = config_for(tiny_model_dir, server={"admin_token": token})
        served = start_in_process(config, reload=lambda: (True, "ok"), address=(host_ip, 0))
        try:
            port = str(served.server.server_address[1])
            status = run(sys.executable, "-c", NETNS_CLIENT, host_ip, port,
                         r"POST /admin/reload HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            assert status.split(" ")[1] == expected, status
            health = run(sys.executable, "-c", NETNS_CLIENT, host_ip, port, r"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            assert health.split(" ")[1] == "200"
            if token:
                allowed = run(sys.executable, "-c", NETNS_CLIENT, host_ip, port,
                              r"POST /admin/reload HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer tok\r\n"
                              r"Content-Length: 0\r\n\r\n")
                assert allowed.split(" ")[1] == "200"
        finally:
            served.close()


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True), ("fe80::1%lo", False),
    ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("", False), ("localhost", False), ("/run/inferd.sock", False),
])
def test_only_loopback_addresses_are_loopback(host, loopback):
    assert is_loopback(host) is loopback
