"""Every status /openapi.json documents is reached here, live, or explained (issue 14).

For each operation, the statuses the HTTP layer answers for any route are provoked with raw
requests (a malformed head, a request line too long, an unknown Expect, too many headers; 411 and
413 where a body is read), then each route's own statuses with ordinary requests. What cannot be
reached cheaply here (a slow client, a full server, a client that is not on loopback) is named
in EXPLAINED with the test that reaches it."""

from __future__ import annotations

import io
import json
import re

import pytest
import requests
from PIL import Image

from inferd import keys
from inferd.routes import docs
from tests.support import REPO, config_for, Raw

DOC = docs.openapi_document()
TOKEN = "s3cret"

# status -> the test that reaches it, for every operation that documents it.
EXPLAINED = {
    "403": "tests/http/test_admin.py::test_admin_from_a_real_non_loopback_address",
    "408": "tests/http/test_caps.py::test_slowloris_is_cut_off",
    "422": "tests/models/test_repository.py::test_a_model_that_answers_nan_gets_422_never_a_nan_token",
    "503": "tests/http/test_caps.py::test_beyond_the_request_cap_503_with_retry_after_and_health_still_answers",
}
# Route-specific 503s (queue full, decode budget taken) are reached there too.
EXPLAINED_TOO = {
    "tests/protocols/test_v2.py::test_non_finite_numbers_are_refused_alike_in_json_and_binary_and_never_answered",
    "tests/http/test_caps.py::test_full_queue_gives_503_at_once",
    "tests/models/test_decoding.py::test_an_image_that_could_never_fit_the_budget_is_413_and_a_busy_budget_503",
}


def png(size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def servers(tiny_model_dir, tmp_path_factory):
    """The tiny model three times: with low limits; with an admin token, docs off and reloads that
    fail; with API keys, one of them spent for the next hour."""
    from tests.support import start_in_process

    limits = {"max_image_pixels": 10_000, "max_files_per_batch": 2, "max_request_line": 1024}
    main = start_in_process(config_for(tiny_model_dir, limits=limits, logging={"access_log": "false"}))
    locked = start_in_process(config_for(tiny_model_dir, server={"admin_token": TOKEN, "docs": "false"},
                                         logging={"access_log": "false"}),
                              reload=lambda: (False, "model.onnx: onnxruntime cannot load it"))
    keys_path = tmp_path_factory.mktemp("keys") / "keys"
    spent = keys.new_key()
    keys_path.write_text(keys.KeyLine("spent", keys.key_hash(spent), {"rate": 0.0003, "burst": 1}).text() + "\n")
    keys_path.chmod(0o600)
    keyed = start_in_process(config_for(tiny_model_dir, auth={"keys_file": str(keys_path)},
                                        logging={"access_log": "false"}))
    keyed.spent = spent
    yield main, locked, keyed
    for server in (main, locked, keyed):
        server.close()


def raw_status(url: str, request: bytes) -> int:
    """The status of the answer to `request`, sent as bytes on a new connection."""
    raw = Raw(url)
    try:
        return raw.send(request).response().status
    finally:
        raw.close()


def concrete(path: str, model: str) -> str:
    return path.replace("{model}", model).replace("{name}", model).replace("{version}", "1")


def layer_statuses(url: str, method: str, path: str, body_read: bool, content_type: str) -> dict[str, int]:
    """What the HTTP layer answers on this route for each kind of broken request."""
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\n"
    answers = {
        "400": raw_status(url, f"{head}Broken header line\r\n\r\n".encode()),
        "414": raw_status(url, f"{method} {path}?{'a' * 2000} HTTP/1.1\r\nHost: test\r\n\r\n".encode()),
        "417": raw_status(url, f"{head}Expect: something-else\r\n\r\n".encode()),
        "431": raw_status(url, (head + "".join(f"X-{i}: {i}\r\n" for i in range(70)) + "\r\n").encode()),
    }
    if method == "POST":
        answers["413"] = raw_status(url, f"{head}Content-Type: {content_type}\r\nContent-Length: {10**12}\r\n\r\n".encode())
    if body_read:
        answers["411"] = raw_status(url, f"{head}Content-Type: {content_type}\r\n\r\n".encode())
    return answers


def route_statuses(main: str, locked: str, model: str) -> set[tuple[str, str, str]]:
    """(method, documented path, status) for ordinary requests that reach each route's own statuses."""
    v2_request = json.loads(json.dumps(
        DOC["paths"]["/v2/models/{model}/infer"]["post"]["requestBody"]["content"]["application/json"]["example"]))
    v2_request["inputs"][0]["data"] = [{"b64": __import__("base64").b64encode(png()).decode()}]
    v2_request["outputs"] = None
    many = {**v2_request, "inputs": [{**v2_request["inputs"][0], "shape": [3], "data": ["a", "b", "c"]}]}
    calls = [
        ("post", "/infer", 200, main, "/infer", {"files": {"file": ("a.png", png())}}),
        ("post", "/infer", 400, main, "/infer?top_k=zero", {"files": {"file": ("a.png", png())}}),
        ("post", "/infer", 404, main, "/infer?model=nope", {"files": {"file": ("a.png", png())}}),
        ("post", "/infer", 413, main, "/infer", {"files": {"file": ("big.png", png((200, 200)))}}),
        ("post", "/infer", 415, main, "/infer", {"files": {"file": ("a.txt", b"text")}}),
        ("post", "/infer/batch", 200, main, "/infer/batch", {"files": [("files", ("a.png", png()))]}),
        ("post", "/infer/batch", 400, main, "/infer/batch", {"files": [("other", ("a.png", png()))]}),
        ("post", "/infer/batch", 404, main, "/infer/batch?version=9", {"files": [("files", ("a.png", png()))]}),
        ("post", "/infer/batch", 413, main, "/infer/batch", {"files": [("files", ("a.png", png()))] * 3}),
        ("post", "/infer/batch", 415, main, "/infer/batch", {"data": b"x", "headers": {"Content-Type": "text/plain"}}),
        ("get", "/health", 200, main, "/health", {}),
        ("get", "/metrics", 200, main, "/metrics", {}),
        ("get", "/metrics", 400, main, "/metrics?format=xml", {}),
        ("get", "/models", 200, main, "/models", {}),
        ("post", "/admin/reload", 200, main, "/admin/reload", {}),
        ("post", "/admin/reload", 401, locked, "/admin/reload", {}),
        ("post", "/admin/reload", 500, locked, "/admin/reload", {"headers": {"Authorization": f"Bearer {TOKEN}"}}),
        ("post", "/admin/models/{name}/reload", 200, main, f"/admin/models/{model}/reload", {}),
        ("post", "/admin/models/{name}/reload", 401, locked, f"/admin/models/{model}/reload", {}),
        ("post", "/admin/models/{name}/reload", 404, main, "/admin/models/nope/reload", {}),
        ("post", "/admin/models/{name}/reload", 500, locked, f"/admin/models/{model}/reload",
         {"headers": {"Authorization": f"Bearer {TOKEN}"}}),
        *[("post", path, status, main, concrete(path, model), options)
          for path in ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer")
          for status, options in ((200, {"json": v2_request}), (400, {"data": b"{"}), (413, {"json": many}),
                                  (415, {"data": b"{}", "headers": {"Content-Type": "text/plain"}}))],
        ("get", "/openapi.json", 200, main, "/openapi.json", {}),
        ("get", "/openapi.json", 404, locked, "/openapi.json", {}),
        ("get", "/docs", 200, main, "/docs", {}),
        ("get", "/docs", 404, locked, "/docs", {}),
    ]
    reached = set()
    for method, documented, status, base, target, options in calls:
        answer = requests.request(method.upper(), f"{base}{target}", timeout=30, **options)
        assert answer.status_code == status, (method, target, answer.status_code, answer.text[:200])
        reached.add((method, documented, str(status)))
    return reached | v2_model_statuses(main, model, v2_request)


def v2_model_statuses(main: str, model: str, v2_request: dict) -> set[tuple[str, str, str]]:
    """Every /v2 operation: 200 on the model (and version 1), 404 on one that is not loaded."""
    reached = set()
    for path, item in DOC["paths"].items():
        if not path.startswith("/v2"):
            continue
        for method in item:
            options = {"json": v2_request} if method == "post" else {}
            good = requests.request(method.upper(), f"{main}{concrete(path, model)}", timeout=30, **options)
            reached.add((method, path, str(good.status_code)))
            if "{model}" in path:
                unknown = concrete(path, model).replace(f"/versions/1", "/versions/7") if "{version}" in path \
                    else concrete(path, "nope")
                reached.add((method, path, str(requests.request(method.upper(), f"{main}{unknown}", timeout=30,
                                                                **options).status_code)))
    return reached


def draining_statuses(server) -> set[tuple[str, str, str]]:
    """While draining: /health and /v2/health/ready answer 503, reloads are refused with 503."""
    server.daemon.control.draining = True
    try:
        targets = [("get", "/health"), ("get", "/v2/health/ready"), ("post", "/admin/reload")]
        return {(m, p, str(requests.request(m.upper(), f"{server.url}{p}", timeout=10).status_code)) for m, p in targets}
    finally:
        server.daemon.control.draining = False


def keyed_statuses(keyed, model: str) -> set[tuple[str, str, str]]:
    """Each operation that takes an API key: 401 without one, 429 with the key that is spent."""
    requests.post(f"{keyed.url}/infer", data=b"", headers={"Authorization": f"Bearer {keyed.spent}"}, timeout=10)
    reached = set()
    for path, item in DOC["paths"].items():
        for method, operation in item.items():
            if {"apiKey": []} not in operation.get("security", []):
                continue
            url = f"{keyed.url}{concrete(path, model)}"
            missing = requests.request(method.upper(), url, data=b"", timeout=10)
            spent = requests.request(method.upper(), url, data=b"", timeout=10, headers={"X-API-Key": keyed.spent})
            assert (missing.status_code, spent.status_code) == (401, 429), (method, path, missing.text, spent.text)
            reached |= {(method, path, "401"), (method, path, "429")}
    return reached


def test_every_documented_status_is_reached_or_explained(servers):
    main, locked, keyed = servers
    model = requests.get(f"{main.url}/models", timeout=10).json()["default"]
    reached = route_statuses(main.url, locked.url, model) | draining_statuses(main) | keyed_statuses(keyed, model)
    for path, item in DOC["paths"].items():
        for method, operation in item.items():
            body = operation.get("requestBody", {}).get("content", {})
            content_type = "application/json" if "application/json" in body else "multipart/form-data; boundary=x"
            body_read = "411" in operation["responses"]
            for status, got in layer_statuses(main.url, method.upper(), concrete(path, model), body_read,
                                              content_type).items():
                assert got == int(status), (method, path, status, got)
                reached.add((method, path, status))
    missing = [(method, path, status) for path, item in DOC["paths"].items() for method, operation in item.items()
               for status in operation["responses"] if (method, path, status) not in reached and status not in EXPLAINED]
    assert missing == []
    undocumented = [r for r in reached if r[2] not in DOC["paths"][r[1]][r[0]]["responses"]]
    assert undocumented == []


@pytest.mark.parametrize("reference", sorted(set(EXPLAINED.values()) | EXPLAINED_TOO))
def test_each_explanation_names_a_test_that_exists(reference):
    path, name = reference.split("::")
    assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M), reference
