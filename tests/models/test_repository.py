"""A repository of models and versions (issue 11): layout and version policies, every model and
version reachable and named in its answers, /health and /models, and reloads that add, remove,
change and break models under load from 8 connections, with real daemons."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from PIL import Image

from inferd import config, loading
from tests.support import DEFAULT_MODEL, config_for

RED = (255, 0, 0)


def png(rgb=RED) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), rgb).save(buffer, "PNG")
    return buffer.getvalue()


def tiny_version(directory: Path, source: Path, label_prefix: str = "") -> Path:
    """A version directory of the tiny model; labels prefixed so answers tell versions apart."""
    directory.mkdir(parents=True)
    (directory / "model.onnx").symlink_to(source / "model.onnx")
    labels = (source / "labels.txt").read_text().splitlines()
    (directory / "labels.txt").write_text("".join(f"{label_prefix}{label}\n" for label in labels))
    return directory


def tiny_model(repository: Path, name: str, source: Path, versions: dict[str, str] | None = None,
               policy: str | None = None) -> Path:
    """repository/name: unversioned (versions None) or with numbered versions {number: label prefix}."""
    root = repository / name
    manifest = (source / "model.ini").read_text()
    if policy:
        manifest += f"\n[versions]\npolicy = {policy}\n"
    if versions is None:
        tiny_version(root, source)
    else:
        for number, prefix in versions.items():
            tiny_version(root / number, source, prefix)
    (root / "model.ini").write_text(manifest)
    return root


def infer(url: str, model: str | None = None, version: str | None = None, data: bytes | None = None):
    query = "&".join(f"{k}={v}" for k, v in (("model", model), ("version", version)) if v)
    return requests.post(f"{url}/infer{'?' + query if query else ''}", data=data or png(),
                         headers={"Content-Type": "image/png"}, timeout=30)


# -- layout and policies (no daemon) -------------------------------------------------------------

def scanned(repository: Path, **models_section) -> dict[str, list[str]]:
    section = "".join(f"{k} = {v}\n" for k, v in models_section.items())
    cfg = config.parse(f"[models]\nrepository = {repository}\n{section}", "<test>")
    sources, failures = loading.scan(cfg)
    found: dict[str, list[str]] = {}
    for source in sources:
        found.setdefault(source.name, []).append(source.version)
    return {**found, **{name: ["failed: " + reason] for name, reason in failures.items()}}


def test_version_policies_and_names(tmp_path, tiny_model_dir):
    repository = tmp_path / "repo"
    tiny_model(repository, "plain", tiny_model_dir)
    tiny_model(repository, "many", tiny_model_dir, {"1": "", "2": "", "10": ""})
    tiny_model(repository, "pinned", tiny_model_dir, {"1": "", "2": "", "3": ""}, policy="specific 1 3")
    tiny_model(repository, "gone", tiny_model_dir, {"1": ""}, policy="specific 2")
    tiny_version(repository / "bad name!", tiny_model_dir)
    (repository / ".hidden").mkdir()
    found = scanned(repository)
    assert found["plain"] == ["1"] and found["many"] == ["10"] and found["pinned"] == ["1", "3"]
    assert found["gone"][0].startswith("failed:") and "missing versions [2]" in found["gone"][0]
    assert found["bad name!"][0].startswith("failed: not a model name")
    assert ".hidden" not in found
    assert scanned(repository, version_policy="all")["many"] == ["1", "2", "10"]
    assert scanned(repository, version_policy="latest 2")["many"] == ["2", "10"]


def test_bad_version_policies_are_config_errors():
    for text in ("latest", "latest 0", "newest 1", "specific", "all 2", "specific x"):
        with pytest.raises(config.ConfigError, match="version_policy"):
            config.parse(f"[models]\nversion_policy = {text}\n", "<test>")


# -- a repository served ---------------------------------------------------------------------------

@pytest.fixture
def three_models(tmp_path, tiny_model_dir, resnet50_dir, default_model_dir):
    """EfficientNet-Lite0 (the default), the ResNet-50 preset, and the tiny model in two versions."""
    repository = tmp_path / "repo"
    repository.mkdir()
    (repository / "lite0").symlink_to(default_model_dir)
    (repository / "resnet50").symlink_to(resnet50_dir)
    tiny_model(repository, "tiny", tiny_model_dir, {"1": "v1-", "2": "v2-"}, policy="all")
    return repository


def test_every_model_and_version_serves_and_says_which(start_daemon, three_models, images):
    daemon = start_daemon(f"[models]\nrepository = {three_models}\ndefault = lite0\n")
    answer = infer(daemon.url, data=images["cat.jpg"]).json()
    assert (answer["model"], answer["version"]) == ("lite0", "1")
    assert answer["predictions"][0]["label"] in ("tiger cat", "Egyptian cat", "tabby")
    assert infer(daemon.url, "resnet50").json()["model"] == "resnet50"
    for version, prefix in (("1", "v1-"), ("2", "v2-"), (None, "v2-")):
        served = infer(daemon.url, "tiny", version).json()
        assert served["version"] == (version or "2") and served["predictions"][0]["label"] == prefix + "r9g0b0"
    batch = requests.post(f"{daemon.url}/infer/batch?model=tiny&version=1", timeout=30,
                          files=[("files", ("a.png", png())), ("files", ("b.png", png((0, 0, 255))))]).json()
    assert (batch["model"], batch["version"], batch["successful"]) == ("tiny", "1", 2)
    unknown = infer(daemon.url, "nope")
    assert unknown.status_code == 404 and "lite0" in unknown.json()["error"] and "tiny" in unknown.json()["error"]
    missing = infer(daemon.url, "tiny", "7")
    assert missing.status_code == 404 and "1, 2" in missing.json()["error"]
    health = requests.get(f"{daemon.url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["model"]["name"] == "lite0"
    assert {m["name"]: [v["version"] for v in m["versions"]] for m in health["models"]} == {
        "lite0": ["1"], "resnet50": ["1"], "tiny": ["1", "2"]}
    listing = requests.get(f"{daemon.url}/models", timeout=10).json()
    assert listing["default"] == "lite0"
    tiny = next(m for m in listing["models"] if m["name"] == "tiny")
    assert [v["labels"] for v in tiny["versions"]] == [1000, 1000] and len(tiny["versions"][0]["sha256"]) == 64


def test_metrics_are_labelled_by_model_and_version(start_daemon, three_models):
    daemon = start_daemon(f"[models]\nrepository = {three_models}\ndefault = lite0\n")
    infer(daemon.url, "tiny", "1")
    infer(daemon.url, "tiny", "2")
    infer(daemon.url, "tiny", "2")
    text = requests.get(f"{daemon.url}/metrics?format=prometheus", timeout=10).text
    assert 'inferd_images_total{model="tiny",version="1",outcome="ok"} 1' in text
    assert 'inferd_images_total{model="tiny",version="2",outcome="ok"} 2' in text
    info = [line for line in text.splitlines() if line.startswith("inferd_model_info{")]
    assert len(info) == 4 and all('version="' in line for line in info)
    view = requests.get(f"{daemon.url}/metrics", timeout=10).json()
    assert view["images"]["ok"] == 3 and view["models"]["tiny"]["versions"]["2"]["images"]["ok"] == 2


# -- reloads under load ----------------------------------------------------------------------------

class Load:
    """8 keep-alive clients posting to the given models in turn until stopped; answers tallied by
    (model asked for, status, model and version answered, label)."""

    def __init__(self, url: str, models: list[str]):
        self.url, self.models = url, models
        self.tally: Counter = Counter()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(8)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def _client(self, i: int) -> None:
        session, data = requests.Session(), png()
        deadline = time.monotonic() + 60
        n = i
        while not self.stopping.is_set() and time.monotonic() < deadline:
            model = self.models[n % len(self.models)]
            n += 1
            answer = session.post(f"{self.url}/infer?model={model}", data=data, timeout=30,
                                  headers={"Content-Type": "image/png"})
            body = answer.json()
            label = body["predictions"][0]["label"] if answer.status_code == 200 else body["error"][:40]
            self.tally[(model, answer.status_code, body.get("version"), label)] += 1

    def statuses(self, model: str) -> Counter:
        return Counter({status: n for (m, status, _, _), n in self.tally.items() if m == model}
                       ) + Counter()


def reload(daemon) -> tuple[int, dict]:
    answer = requests.post(f"{daemon.url}/admin/reload", timeout=60)
    return answer.status_code, answer.json()


def test_reloads_add_remove_change_and_break_models_under_load(start_daemon, tmp_path, tiny_model_dir):
    repository = tmp_path / "repo"
    for name in ("steady", "changing", "breaking", "leaving"):
        tiny_model(repository, name, tiny_model_dir, {"1": f"{name}-"})
    daemon = start_daemon(f"[models]\nrepository = {repository}\ndefault = steady\n")
    with Load(daemon.url, ["steady", "changing", "breaking", "leaving", "arriving"]) as load:
        time.sleep(0.5)
        tiny_model(repository, "arriving", tiny_model_dir, {"1": "arriving-"})
        tiny_version(repository / "changing" / "2", tiny_model_dir, "changing2-")
        tiny_version(repository / "breaking" / "2", tiny_model_dir, "breaking2-")
        (repository / "breaking" / "2" / "model.onnx").unlink()
        (repository / "breaking" / "2" / "model.onnx").write_bytes(b"not an onnx graph")
        shutil.rmtree(repository / "leaving")
        status, outcome = reload(daemon)
        time.sleep(1.0)
    assert status == 500 and "breaking" in outcome["error"] and "onnxruntime cannot load" in outcome["error"]
    labels = {(m, version, label) for (m, status, version, label) in load.tally if status == 200}
    for model in ("steady", "changing", "breaking"):  # never failed: every answer a 200
        assert set(load.statuses(model)) == {200}, (model, load.statuses(model))
    assert ("changing", "2", "changing2-r9g0b0") in labels and ("breaking", "1", "breaking-r9g0b0") in labels
    assert set(load.statuses("leaving")) <= {200, 404} and set(load.statuses("arriving")) <= {200, 404}
    assert load.statuses("arriving")[200] > 0 and load.statuses("leaving")[404] > 0
    assert sum(load.tally.values()) > 100
    print("answers:", {model: dict(load.statuses(model)) for model in load.models})
    health = requests.get(f"{daemon.url}/health", timeout=10).json()
    states = {m["name"]: m for m in health["models"]}
    assert "leaving" not in states and states["breaking"]["versions"] == [{"version": "1", "state": "ready"}]
    assert "onnxruntime cannot load" in states["breaking"]["last_error"]
    assert [v["version"] for v in states["changing"]["versions"]] == ["2"]
    text = requests.get(f"{daemon.url}/metrics?format=prometheus", timeout=10).text
    assert 'inferd_model_reloads_total{model="breaking",result="failure"} 1' in text
    assert 'inferd_model_reloads_total{model="changing",result="success"} 1' in text
    assert "reload failed for model breaking" in daemon.log()


def real_model(repository: Path, name: str, source: Path, versions: list[str]) -> Path:
    """repository/name with numbered versions of a built model (EfficientNet-Lite0, ResNet-50)."""
    root = repository / name
    for number in versions:
        (root / number).mkdir(parents=True)
        (root / number / "model.onnx").symlink_to(source / "model.onnx")
    for shared in ("model.ini", "labels.txt"):
        (root / shared).symlink_to(source / shared)
    return root


def test_real_models_reload_under_load_and_a_broken_resnet50_keeps_serving(
        start_daemon, tmp_path, default_model_dir, resnet50_dir, tiny_model_dir):
    """The issue's repository under load from 8 connections: EfficientNet-Lite0 gains a version 2
    (loaded, then swapped in while it serves), ResNet-50 gains a version 2 that cannot load (its
    version 1 keeps serving), a tiny model leaves and another arrives."""
    repository = tmp_path / "repo"
    real_model(repository, "lite0", default_model_dir, ["1"])
    real_model(repository, "resnet50", resnet50_dir, ["1"])
    tiny_model(repository, "leaving", tiny_model_dir, {"1": "leaving-"})
    daemon = start_daemon(f"[models]\nrepository = {repository}\ndefault = lite0\n")
    with Load(daemon.url, ["lite0", "resnet50", "leaving", "arriving"]) as load:
        time.sleep(1.0)
        (repository / "lite0" / "2").mkdir()
        (repository / "lite0" / "2" / "model.onnx").symlink_to(default_model_dir / "model.onnx")
        (repository / "resnet50" / "2").mkdir()
        (repository / "resnet50" / "2" / "model.onnx").write_bytes(b"not an onnx graph")
        shutil.rmtree(repository / "leaving")
        tiny_model(repository, "arriving", tiny_model_dir, {"1": "arriving-"})
        status, outcome = reload(daemon)
        time.sleep(1.5)
    assert status == 500 and "failed: resnet50: model.onnx: onnxruntime cannot load" in outcome["error"]
    for model in ("lite0", "resnet50"):  # never failed: every answer a 200
        assert set(load.statuses(model)) == {200}, (model, load.statuses(model))
    versions = {(m, version) for (m, status, version, _) in load.tally if status == 200}
    assert {("lite0", "1"), ("lite0", "2"), ("resnet50", "1")} <= versions and ("resnet50", "2") not in versions
    assert set(load.statuses("leaving")) <= {200, 404} and load.statuses("arriving")[200] > 0
    print("answers:", {model: dict(load.statuses(model)) for model in load.models}, "versions:", sorted(versions))
    health = {m["name"]: m for m in requests.get(f"{daemon.url}/health", timeout=10).json()["models"]}
    assert health["resnet50"]["versions"] == [{"version": "1", "state": "ready"}] and "leaving" not in health


def test_one_model_reloads_alone_and_an_unchanged_one_is_kept(start_daemon, tmp_path, tiny_model_dir):
    repository = tmp_path / "repo"
    tiny_model(repository, "a", tiny_model_dir, {"1": "a1-"})
    tiny_model(repository, "b", tiny_model_dir, {"1": "b1-"})
    daemon = start_daemon(f"[models]\nrepository = {repository}\n")
    before = {m["name"]: m["versions"][0]["loaded_at"]
              for m in requests.get(f"{daemon.url}/models", timeout=10).json()["models"]}
    tiny_version(repository / "a" / "2", tiny_model_dir, "a2-")
    tiny_version(repository / "b" / "2", tiny_model_dir, "b2-")
    answer = requests.post(f"{daemon.url}/admin/models/a/reload", timeout=60)
    assert answer.status_code == 200, answer.text
    after = {m["name"]: m["versions"] for m in requests.get(f"{daemon.url}/models", timeout=10).json()["models"]}
    assert [v["version"] for v in after["a"]] == ["2"]
    assert [v["version"] for v in after["b"]] == ["1"] and after["b"][0]["loaded_at"] == before["b"]
    assert requests.post(f"{daemon.url}/admin/models/zzz/reload", timeout=10).status_code == 404
    status, _ = reload(daemon)  # everything: b moves to 2, a is unchanged and kept
    assert status == 200
    models = {m["name"]: m["versions"] for m in requests.get(f"{daemon.url}/models", timeout=10).json()["models"]}
    assert models["a"][0]["loaded_at"] == after["a"][0]["loaded_at"] and models["b"][0]["version"] == "2"


def test_a_model_whose_policy_breaks_keeps_its_versions(start_daemon, tmp_path, tiny_model_dir):
    repository = tmp_path / "repo"
    tiny_model(repository, "a", tiny_model_dir, {"1": "a1-"})
    daemon = start_daemon(f"[models]\nrepository = {repository}\n")
    manifest = repository / "a" / "model.ini"
    manifest.write_text(manifest.read_text() + "\n[versions]\npolicy = specific 9\n")
    status, outcome = reload(daemon)
    assert status == 500 and "missing versions [9]" in outcome["error"]
    assert infer(daemon.url, "a").json()["predictions"][0]["label"] == "a1-r9g0b0"


def test_a_repository_whose_default_model_fails_does_not_start(start_daemon, tmp_path, tiny_model_dir):
    repository = tmp_path / "repo"
    tiny_model(repository, "good", tiny_model_dir)
    (repository / "broken").mkdir()
    (repository / "broken" / "model.ini").write_text((tiny_model_dir / "model.ini").read_text())
    daemon = start_daemon(f"[models]\nrepository = {repository}\ndefault = broken\n", wait=False)
    assert daemon.proc.wait(60) == 1
    assert "cannot serve the model" in daemon.log()
    served = start_daemon(f"[models]\nrepository = {repository}\ndefault = good\n")  # the others start
    health = requests.get(f"{served.url}/health", timeout=10).json()
    assert health["status"] == "ok" and "broken" in {m["name"] for m in health["models"] if m["state"] == "failed"}


def test_the_default_model_directory_still_serves_alone(start_daemon):
    daemon = start_daemon(f"[model]\npath = {DEFAULT_MODEL}\n")
    health = requests.get(f"{daemon.url}/health", timeout=10).json()
    assert [m["name"] for m in health["models"]] == ["efficientnet-lite0"]


def test_a_model_that_answers_nan_gets_422_never_a_nan_token(serve, tmp_path):
    """Issue 21: every answer is RFC 8259 JSON; scores no JSON number can carry are refused."""
    from tests.support import nan_model

    server = serve(config_for(nan_model(tmp_path / "nan"), logging={"access_log": "false"}))
    image = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(image, "PNG")
    single = requests.post(f"{server.url}/infer", files={"file": ("a.png", image.getvalue())}, timeout=10)
    assert single.status_code == 422 and "non-finite scores" in single.json()["error"]
    batch = requests.post(f"{server.url}/infer/batch", files=[("files", ("a.png", image.getvalue()))] * 2, timeout=10)
    assert batch.ok and [entry["status"] for entry in batch.json()["results"]] == [422, 422]
    for answer in (single, batch):
        json.loads(answer.text, parse_constant=lambda token: pytest.fail(f"{token} in {answer.text[:200]}"))
    images = requests.get(f"{server.url}/metrics", timeout=10).json()["images"]
    assert images["error"] == 3 and images["ok"] == 0


def test_symlinked_model_directories_are_logged_and_refused_outside_when_asked(tmp_path, tiny_model_dir, caplog):
    """Issue 21: a model directory that is a symlink out of the repository was served silently."""
    repository = tmp_path / "repository"
    repository.mkdir()
    outside = tmp_path / "elsewhere" / "linked"
    shutil.copytree(tiny_model_dir, outside)
    (repository / "linked").symlink_to(outside)
    shutil.copytree(tiny_model_dir, repository / "inside")
    (repository / "alias").symlink_to(repository / "inside")
    follow = config.parse(f"[models]\nrepository = {repository}\n")
    with caplog.at_level("INFO", logger="inferd.loading"):
        sources, failures = loading.scan(follow)
    assert {s.name for s in sources} == {"linked", "inside", "alias"} and not failures
    assert f"{repository / 'linked'} is a symbolic link to {outside}, outside the repository" in caplog.text
    assert f"{repository / 'alias'} is a symbolic link to {repository / 'inside'}\n" in caplog.text + "\n"
    strict = config.parse(f"[models]\nrepository = {repository}\nfollow_symlinks = false\n")
    sources, failures = loading.scan(strict)
    assert {s.name for s in sources} == {"inside", "alias"}
    assert failures["linked"].endswith("outside the repository ([models] follow_symlinks = false)")


def test_a_directory_that_is_not_a_model_name_counts_under_one_label(serve, tmp_path, tiny_model_dir):
    """Issue 21: "<b>x" became a permanent inferd_model_reloads_total{model="<b>x"} series."""
    repository = tmp_path / "repository"
    shutil.copytree(tiny_model_dir, repository / "tiny")
    (repository / "<b>x").mkdir()
    (repository / "a b").mkdir()
    server = serve(config.parse(f"[models]\nrepository = {repository}\n[logging]\naccess_log = false\n"))
    assert requests.post(f"{server.url}/admin/reload", timeout=20).status_code == 500
    text = requests.get(f"{server.url}/metrics?format=prometheus", timeout=10).text
    reloads = [line for line in text.splitlines() if line.startswith("inferd_model_reloads_total{")]
    assert 'inferd_model_reloads_total{model="(invalid)",result="failure"} 2' in reloads
    assert not any("<b>" in line or "a b" in line for line in reloads), reloads
