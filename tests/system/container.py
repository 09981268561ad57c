"""podman for tests/system/test_container.py: the settings this kind of host needs, the image built
from deploy/container/Containerfile on a base made from the apt mirror, and containers that are
always removed. Published ports are on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.system.systemd_machine import REPO

CONTAINER_DIR = REPO / "deploy" / "container"
BASE = "localhost/inferd-base:bookworm"  # made by `make container-base` (deploy/container/base.sh)
IMAGE = "localhost/inferd:test"


@dataclass
class Podman:
    """Runs podman with a containers.conf from deploy/container/containers-conf.sh."""

    conf: Path

    def __call__(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "CONTAINERS_CONF": str(self.conf)})
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result


def podman_in(directory: Path) -> Podman:
    conf = directory / "containers.conf"
    conf.write_text(subprocess.run(["sh", str(CONTAINER_DIR / "containers-conf.sh")], capture_output=True,
                                   text=True, check=True).stdout)
    return Podman(conf)


def skip_reason(podman: Podman) -> str | None:
    if os.geteuid() != 0:
        return "the container tests run podman as root"
    for tool, package in (("podman", "podman"), ("runc", "runc"), ("catatonit", "catatonit")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make container-deps, or apt-get install {package})"
    if podman("image", "exists", BASE, check=False).returncode != 0:
        return (f"no base image {BASE}: `make container-base` makes it from the apt mirror (~45 s); "
                "`make test-container` does that and runs these tests")
    probe = podman("run", "--rm", "--network", "none", BASE, "true", check=False, timeout=120)
    if probe.returncode != 0:
        return f"podman cannot run a container here: {probe.stderr.strip()}"
    return None


def build_image(podman: Podman, context: Path) -> float:
    """The context from context.sh, then the image; returns the build's seconds (podman reuses
    its cached layers when the context did not change)."""
    subprocess.run(["sh", str(CONTAINER_DIR / "context.sh"), str(context)], check=True, capture_output=True)
    started = time.monotonic()
    podman("build", "--format", "docker", "--build-arg", f"BASE={BASE}", "-t", IMAGE,
           "-f", str(CONTAINER_DIR / "Containerfile"), str(context))
    return time.monotonic() - started


def readable_copy(source: Path, target: Path) -> Path:
    """A copy of the files of `source` that the image's user (uid 10001) can read when mounted."""
    target.mkdir(parents=True)
    target.chmod(0o755)
    for item in source.iterdir():
        shutil.copyfile(item, target / item.name)
        (target / item.name).chmod(0o644)
    return target


@dataclass
class Container:
    podman: Podman
    name: str
    url: str = ""

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until /health answers 200 through the published port (the daemon loads its model first)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                logs = self.podman("logs", self.name, check=False)
                raise AssertionError(f"{self.name} not healthy after {timeout}s:\n{logs.stdout}{logs.stderr}")
            time.sleep(0.1)

    def exit_code(self) -> int:
        return int(self.podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout)

    def logs(self) -> str:
        result = self.podman("logs", self.name)
        return result.stdout + result.stderr


@contextmanager
def running(podman: Podman, name: str, *options: str):
    """A container of IMAGE started with `options` (read-only root, port 8000 published on a free
    loopback port), healthy; removed afterwards, whatever happened."""
    podman("rm", "--force", name, check=False)
    podman("run", "--detach", "--name", name, "--read-only", "--publish", "127.0.0.1::8000", *options, IMAGE)
    try:
        port = podman("port", name, "8000").stdout.strip().rsplit(":", 1)[1]
        container = Container(podman, name, f"http://127.0.0.1:{port}")
        container.wait_healthy()
        yield container
    finally:
        podman("rm", "--force", name, check=False)
