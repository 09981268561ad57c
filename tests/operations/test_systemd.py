"""inferd/systemd.py against real sockets: sd_notify(3) datagrams to a socket the test binds (path
and abstract names), and socket activation with a real listening socket passed as fd 3.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from inferd import systemd


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_fields_arrive_in_one_datagram(notify_socket):
    env = {"NOTIFY_SOCKET": notify_socket.getsockname()}
    assert systemd.notify("READY=1", "STATUS=serving efficientnet-lite0 on 127.0.0.1:8000", env=env) is True
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=serving efficientnet-lite0 on 127.0.0.1:8000"


def test_reloading_carries_monotonic_usec(notify_socket):
    """systemd >= 253 waits for a RELOADING=1 whose MONOTONIC_USEC is not older than its signal."""
    env = {"NOTIFY_SOCKET": notify_socket.getsockname()}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    systemd.notify("RELOADING=1", f"MONOTONIC_USEC={systemd.monotonic_usec()}", env=env)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = dict(line.split("=", 1) for line in notify_socket.recv(4096).decode().splitlines())
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


def test_abstract_socket_name_with_at_sign():
    name = f"inferd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert systemd.notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_non_ascii_status_is_sent_as_utf8(notify_socket):
    systemd.notify("STATUS=modèle chargé", env={"NOTIFY_SOCKET": notify_socket.getsockname()})
    assert notify_socket.recv(4096).decode("utf-8") == "STATUS=modèle chargé"


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}])
def test_no_op_without_notify_socket(env):
    assert systemd.notify("READY=1", env=env) is False


def test_no_fields_sends_nothing(notify_socket):
    assert systemd.notify(env={"NOTIFY_SOCKET": notify_socket.getsockname()}) is False
    notify_socket.settimeout(0.2)
    with pytest.raises(socket.timeout):
        notify_socket.recv(4096)


def test_never_raises_when_the_socket_is_gone(tmp_path, notify_socket):
    path = notify_socket.getsockname()
    notify_socket.close()
    os.unlink(path)
    assert systemd.notify("STOPPING=1", env={"NOTIFY_SOCKET": path}) is False
    assert systemd.notify("STOPPING=1", env={"NOTIFY_SOCKET": "@inferd-test-nobody-listens-here"}) is False
    assert systemd.notify("STOPPING=1", env={"NOTIFY_SOCKET": str(tmp_path)}) is False  # a directory
    assert systemd.notify("STOPPING=1", env={"NOTIFY_SOCKET": "/" + "x" * 200}) is False  # path too long


def test_never_raises_on_a_stream_socket(tmp_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        stream.bind(str(tmp_path / "stream"))
        stream.listen()
        assert systemd.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "stream")}) is False


def test_uses_the_process_environment(notify_socket, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.getsockname())
    assert systemd.notify("READY=1") is True
    assert notify_socket.recv(4096) == b"READY=1"


@pytest.mark.parametrize("env, expected", [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": ""}, None),
    ({}, None),
])
def test_watchdog_interval(env, expected):
    assert systemd.watchdog_interval(env) == expected


@pytest.mark.parametrize("env", [
    {},
    {"LISTEN_PID": "1", "LISTEN_FDS": "1"},  # another process's sockets
    {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "many"},
    {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"},
])
def test_no_sockets_unless_passed_to_this_process(env):
    assert systemd.listen_sockets(env) == []


CHILD = r"""
import json, os, sys
from inferd.systemd import listen_sockets
sockets = listen_sockets()
listener = sockets[0]
connection, _ = listener.accept()
connection.sendall(b"served from fd %d" % listener.fileno())
connection.close()
print(json.dumps({"count": len(sockets), "fd": listener.fileno(), "family": int(listener.family),
                  "address": list(listener.getsockname()), "inheritable": os.get_inheritable(3),
                  "left_in_environ": sorted(k for k in os.environ if k.startswith("LISTEN_"))}))
"""


# What systemd does between fork and exec: the socket to fd 3 (inheritable), LISTEN_* for this pid.
EXEC_LIKE_SYSTEMD = r"""
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)
os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="inferd.socket")
os.execv(sys.executable, [sys.executable, "-c", sys.argv[2]])
"""


def test_listen_sockets_takes_a_real_socket_passed_as_fd_3():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        fd, address = listener.fileno(), listener.getsockname()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        child = subprocess.Popen([sys.executable, "-c", EXEC_LIKE_SYSTEMD, str(fd), CHILD], pass_fds=(fd,),
                                 env=env, stdout=subprocess.PIPE, text=True)
        try:
            with socket.create_connection(address, timeout=30) as client:
                assert client.recv(100) == b"served from fd 3"
            out, _ = child.communicate(timeout=30)
        finally:
            child.kill()
            child.wait()
    assert child.returncode == 0
    assert json.loads(out) == {"count": 1, "fd": 3, "family": int(socket.AF_INET),
                               "address": list(address), "inheritable": False, "left_in_environ": []}
