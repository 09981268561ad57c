"""A real systemd 252 booted in new namespaces, driven from the host (used by tests/system/).

`boot()` runs `unshare --pid --fork --mount --uts --ipc --mount-proc` around a script that makes
every mount private, puts tmpfs on /run, /tmp and /var/tmp (without this, the boot's tmpfiles rules
would empty the host's real /tmp) and copy-on-write overlays on /etc, /opt and /var, so that
systemd/install.sh writes /opt/inferd, /etc/inferd and /etc/systemd/system for real while the host's
directories stay untouched. The network namespace is the host's: tests reach the service on
127.0.0.1. The test config binds port 0; `Machine.url()` reads the port from the STATUS= line.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import model_build

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = Path("/lib/systemd/systemd")
TARGET = "inferd-test.target"
PREFIX = "/opt/inferd"
CONFIG = "/etc/inferd/inferd.conf"
DEFAULT_MODEL = f"{PREFIX}/models/efficientnet-lite0"
TEST_MODELS = "/opt/inferd-test/models"  # inside the machine; readable by the service's DynamicUser
DROPIN_DIRS = ("/run/systemd/system/inferd.service.d", "/run/systemd/system/inferd.socket.d")
# CacheDirectory= under DynamicUser: the optimised graphs of earlier tests' models would stay here.
CACHE_DIRS = ("/var/cache/private/inferd", "/var/cache/inferd")

# Boot services that would touch the host (sysctl, modules, remounts, /tmp cleaning, utmp...) or
# need a real machine; the verified recipe masks exactly these.
MASKED = ("systemd-sysctl", "systemd-modules-load", "systemd-remount-fs", "systemd-binfmt",
          "systemd-sysusers", "systemd-tmpfiles-setup", "systemd-tmpfiles-setup-dev",
          "systemd-update-utmp", "systemd-journal-flush", "systemd-random-seed",
          "systemd-machine-id-commit")

BOOT_SCRIPT = r"""
set -eu
mount --make-rprivate /
mount -t tmpfs -o mode=0755 tmpfs /run
# The checkout may live under /tmp (CI clones anywhere): hold it aside, put it back on the tmpfs.
mkdir -p /run/inferd-test/checkout
mount --bind CHECKOUT /run/inferd-test/checkout
mount -t tmpfs -o mode=1777 tmpfs /tmp
for dir in etc opt var; do
    mkdir -p /run/inferd-test/$dir.upper /run/inferd-test/$dir.work
    mount -t overlay overlay \
        -o lowerdir=/$dir,upperdir=/run/inferd-test/$dir.upper,workdir=/run/inferd-test/$dir.work /$dir
done
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
case CHECKOUT in
    /tmp/*|/var/tmp/*) mkdir -p CHECKOUT && mount --bind /run/inferd-test/checkout CHECKOUT ;;
esac
mkdir -p /run/systemd/system /etc/systemd/journald.conf.d
printf '[Unit]\nDescription=inferd system tests\nRequires=basic.target\nAfter=basic.target\nAllowIsolate=yes\n' \
    > /run/systemd/system/TARGET
for unit in MASKED; do ln -sf /dev/null /run/systemd/system/$unit.service; done
# The load test logs thousands of access lines; the checks that follow must find theirs.
printf '[Journal]\nRateLimitBurst=0\n' > /etc/systemd/journald.conf.d/inferd-test.conf
exec /lib/systemd/systemd --system --unit=TARGET
""".replace("TARGET", TARGET).replace("MASKED", " ".join(MASKED)).replace("CHECKOUT", shlex.quote(str(REPO)))


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "system tests boot systemd in new namespaces: run them as root"
    if not SYSTEMD.is_file():
        return f"{SYSTEMD} is missing (apt-get install systemd)"
    for tool in ("unshare", "nsenter", "systemd-analyze"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install util-linux systemd)"
    if not Path("/usr/bin/python3").is_file():
        return "/usr/bin/python3 is missing: the service venv is made from the system python"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--mount-proc", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create namespaces here: {probe.stderr.strip()}"
    return None


@dataclass
class Machine:
    """A booted systemd; commands run inside its namespaces, files are reached through its root."""

    proc: subprocess.Popen
    pid: int
    log_path: Path
    test_config: str = ""  # the installed config with port 0: what each test starts from
    test_started_usec: int = 0  # CLOCK_REALTIME when the current test began (journal timestamps)
    _ports: dict = field(default_factory=dict)

    def run(self, *argv: str, check: bool = True, timeout: float = 120, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        prefix = ["nsenter", "-t", str(self.pid), "-a"]
        if env is not None:
            prefix += ["env", "-i", *(f"{k}={v}" for k, v in env.items())]
        result = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def systemctl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.run("systemctl", *args, check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", *args).stdout

    def unit_messages(self, *args: str) -> str:
        """MESSAGE of every journal entry about inferd.service (its own lines, systemd's, and the
        socket's) since the current test began, one per line; `args` adds filters such as -p.

        Entries are cut by their timestamp here: journalctl 252 with --after-cursor and a match
        skips the first matching entry.
        """
        out = self.run("journalctl", "--no-pager", "-o", "json", "-u", "inferd.service", "-u", "inferd.socket",
                       *args).stdout
        lines = []
        for line in out.splitlines():
            entry = json.loads(line)
            if int(entry["__REALTIME_TIMESTAMP"]) < self.test_started_usec:
                continue
            message = entry.get("MESSAGE", "")
            if isinstance(message, list):  # not valid UTF-8 (colour codes...): journalctl gives bytes
                message = bytes(message).decode("utf-8", "replace")
            lines.append(message)
        return "\n".join(lines)

    def unit_log(self, *texts: str, args: tuple = (), timeout: float = 15.0) -> str:
        """unit_messages(*args) once it holds every one of `texts`: journald reads each process's
        stream on its own, so a line may land a moment after the command that caused it returned."""
        found = [""]

        def complete() -> bool:
            found.append(self.unit_messages(*args))
            return all(text in found[-1] for text in texts)

        self.wait(complete, f"{texts} in the journal of inferd ({' '.join(args)})", timeout=timeout, interval=0.2)
        return found[-1]

    def path(self, inside: str) -> Path:
        """A path inside the machine, as the host reaches it (through /proc/PID/root)."""
        return Path(f"/proc/{self.pid}/root{inside}")

    def write(self, inside: str, text: str | bytes) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.write_bytes if isinstance(text, bytes) else target.write_text)(text)
        target.chmod(0o644)

    def copy_model(self, source: Path, name: str) -> str:
        """Copy a model directory into the machine, world-readable; returns its path inside."""
        inside = f"{TEST_MODELS}/{name}"
        target = self.path(inside)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for item in source.iterdir():
            if item.is_file():
                shutil.copyfile(item, target / item.name)
                (target / item.name).chmod(0o644)
        for directory in (target, target.parent, target.parent.parent):
            directory.chmod(0o755)
        return inside

    def wait(self, predicate, what: str, timeout: float = 60.0, interval: float = 0.1):
        """Poll `predicate` until it returns a true value; AssertionError naming `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def url(self, unit: str = "inferd.service") -> str:
        """http://127.0.0.1:PORT of the running daemon, from the `STATUS=serving X on HOST:PORT` line.

        A reload rewrites STATUS= without the address, so the port is remembered per main PID.
        """
        props = self.show(unit, "MainPID", "StatusText")
        found = re.search(r" on [^ ]*:(\d+)", props["StatusText"])
        if found:
            self._ports[props["MainPID"]] = int(found.group(1))
        port = self._ports.get(props["MainPID"])
        assert port, f"no port in the status of {unit}: {props}"
        return f"http://127.0.0.1:{port}"

    def poweroff(self) -> None:
        if self.proc.poll() is None:
            self.run("systemctl", "poweroff", "--no-block", check=False, timeout=30)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, 9)  # PID 1 of the namespace: takes every process in it along
                self.proc.wait(30)


def boot(log_path: Path) -> Machine:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--mount-proc",
                                 "sh", "-c", BOOT_SCRIPT], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 30
    pid = 0
    while time.monotonic() < deadline and proc.poll() is None:
        found = children.read_text().split() if children.exists() else []
        if found and Path(f"/proc/{found[0]}/comm").read_text().strip() == "systemd":
            pid = int(found[0])
            break
        time.sleep(0.05)
    if not pid:
        proc.kill()
        raise RuntimeError(f"systemd did not start in the namespace:\n{log_path.read_text(errors='replace')}")
    machine = Machine(proc, pid, log_path)
    machine.wait(lambda: machine.systemctl("is-system-running", check=False, timeout=10).stdout.strip()
                 in ("running", "degraded"), "the machine to finish booting", timeout=60)
    return machine


def install(machine: Machine) -> None:
    """systemd/install.sh with its defaults, as an operator runs it (pip settings passed through)."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    env.update({k: v for k, v in os.environ.items()
                if k.startswith("PIP_") or k.lower() in ("http_proxy", "https_proxy", "no_proxy")})
    result = machine.run("sh", str(REPO / "systemd" / "install.sh"), env=env, check=False, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"install.sh failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    print(result.stdout, file=sys.stderr)


def reset(machine: Machine) -> None:
    machine.systemctl("stop", "inferd.socket", "inferd.service", check=False, timeout=60)
    for directory in DROPIN_DIRS + CACHE_DIRS:
        shutil.rmtree(machine.path(directory), ignore_errors=True)
    machine.path(CACHE_DIRS[1]).unlink(missing_ok=True)  # a symlink to the private one
    machine.write(CONFIG, machine.test_config)
    machine.systemctl("daemon-reload")
    machine.systemctl("reset-failed", "inferd.service", "inferd.socket", check=False)


# The slow graph takes colours on the 0..1 scale, like the tiny one: the same manifest.
SLOW_MANIFEST = model_build.TINY_MANIFEST
SLOW_SIDE = 512  # the loop multiplies two SLOW_SIDE x SLOW_SIDE matrices per iteration


def slow_graph(iterations: int, classes: int = 10):
    """An ONNX graph whose run time follows its input: `iterations` big MatMuls for any image with a
    bright pixel (max > 0), none for the all-zero warm-up batch, so the model loads in milliseconds.

    logits = GlobalAveragePool(x) @ Wc + 1e-6 * mean(Loop(ceil(max(x)) * iterations){ v @ W })
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    orthogonal, _ = np.linalg.qr(rng.standard_normal((SLOW_SIDE, SLOW_SIDE)))  # keeps v bounded
    constants = {"W": orthogonal.astype(np.float32), "v0": np.eye(SLOW_SIDE, dtype=np.float32),
                 "K": np.array(float(iterations), np.float32), "cond": np.array(True),
                 "Wc": rng.standard_normal((3, classes)).astype(np.float32), "eps": np.array(1e-6, np.float32)}
    square = [SLOW_SIDE, SLOW_SIDE]
    body = helper.make_graph(
        [helper.make_node("MatMul", ["v_in", "W"], ["v_out"]), helper.make_node("Identity", ["c_in"], ["c_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, square)],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, square)])
    nodes = [
        helper.make_node("ReduceMax", ["input"], ["max"], keepdims=0),
        helper.make_node("Ceil", ["max"], ["bright"]),
        helper.make_node("Mul", ["bright", "K"], ["trips"]),
        helper.make_node("Cast", ["trips"], ["trip_count"], to=TensorProto.INT64),
        helper.make_node("Loop", ["trip_count", "cond", "v0"], ["v"], body=body),
        helper.make_node("ReduceMean", ["v"], ["v_mean"], keepdims=0),
        helper.make_node("Mul", ["v_mean", "eps"], ["tiny"]),
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["colours"]),
        helper.make_node("MatMul", ["colours", "Wc"], ["scores"]),
        helper.make_node("Add", ["scores", "tiny"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def seconds_per_iteration() -> float:
    """How long one slow_graph loop iteration takes here (best of three runs of 50, after a warm-up)."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(slow_graph(50).SerializeToString(), providers=["CPUExecutionProvider"])
    image = np.ones((1, 3, 224, 224), np.float32)
    session.run(None, {"input": image})
    times = []
    for _ in range(3):
        started = time.perf_counter()
        session.run(None, {"input": image})
        times.append(time.perf_counter() - started)
    return min(times) / 50  # the least disturbed run: other load only makes the model slower


def dropin(machine: Machine, unit: str, text: str, name: str = "test.conf") -> None:
    """Add a runtime drop-in for `unit` (removed by the `inferd` fixture) and reload systemd."""
    machine.write(f"/run/systemd/system/{unit}.d/{name}", text)
    machine.systemctl("daemon-reload")


def config_text(text: str, **sections: dict) -> str:
    """`text` (a config listing every key) with keys rewritten, e.g. model={"path": "/x"}."""
    for section, values in sections.items():
        for key, value in values.items():
            pattern = rf"(?m)(^\[{section}\]$[^\[]*?^){key} = [^\n]*$"
            text, count = re.subn(pattern, rf"\g<1>{key} = {value}", text, count=1)
            assert count == 1, f"no [{section}] {key} in the installed config"
    return text


def set_config(machine: Machine, **sections: dict) -> None:
    """Rewrite keys of the test config, e.g. set_config(m, model={"path": "/x"})."""
    machine.write(CONFIG, config_text(machine.test_config, **sections))
