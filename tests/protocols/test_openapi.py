"""GET /openapi.json and GET /docs (issue 14): the document is valid OpenAPI 3.1, lists exactly the
routes the server dispatches on, its examples fit its schemas and are what the server really
answers; [server] docs = false turns both off; the page's Content-Security-Policy allows nothing
but itself; the page ships as package data. The cases schemathesis found are kept at the end."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import zipfile

import jsonschema
import pytest
import requests
from openapi_spec_validator import validate

from inferd.http.messages import Route
from inferd.routes import GUARDS, ROUTES, docs, openapi, v2_spec
from tests.support import REPO, config_for

DOC = docs.openapi_document()
MODEL = "efficientnet-lite0"


@pytest.fixture(scope="module")
def lite0(default_model_dir):
    from tests.support import start_in_process

    server = start_in_process(config_for(default_model_dir, logging={"access_log": "false"}))
    yield server
    server.close()


def operations(document=DOC):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_document_is_valid_openapi_3_1():
    validate(DOC)
    assert DOC["openapi"] == "3.1.0"


def test_every_dispatched_route_and_method_has_exactly_one_operation():
    dispatched = {(route.path, method.lower()) for route in ROUTES for method in route.methods}
    assert {(path, method) for path, method, _ in operations()} == dispatched
    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids))


def test_a_route_or_guard_without_a_description_breaks_the_document():
    def undocumented(request, context):
        raise AssertionError("never called")

    with pytest.raises(openapi.Undocumented, match="undocumented has no description"):
        docs.openapi_document(routes=ROUTES + (Route("/new", {"GET": undocumented}),))
    with pytest.raises(openapi.Undocumented, match="undocumented has no description"):
        docs.openapi_document(guards=GUARDS + (("/infer", undocumented),))
    with pytest.raises(openapi.Undocumented, match="path parameter 'other'"):
        docs.openapi_document(routes=ROUTES + (Route("/v2/models/{other}", {"GET": v2_spec.v2.live}),))


def test_every_status_is_a_documented_json_error_or_a_documented_body():
    for path, method, operation in operations():
        assert "200" in operation["responses"], (method, path)
        for status, response in operation["responses"].items():
            response = resolve(response)
            assert response["description"] and response.get("content"), (method, path, status)
            if status.startswith(("4", "5")) and (path, status) not in {("/health", "503"), ("/v2/health/ready", "503")}:
                assert ("Error" in json.dumps(response["content"]["application/json"]["schema"])), (method, path, status)


def test_operations_name_their_security_schemes():
    """Admin routes take the admin token (or loopback); inference routes an API key when keys are on."""
    for path, method, operation in operations():
        route = next(r for r in ROUTES if r.path == path)
        if path.startswith("/admin/"):
            expected = [{"adminToken": []}, {}]
        elif route.guard is not None:
            expected = [{"apiKey": []}, {"apiKeyHeader": []}, {}]
        else:
            expected = None
        assert operation.get("security") == expected, (method, path)
        assert ("401" in operation["responses"]) == (expected is not None), (method, path)
    schemes = DOC["components"]["securitySchemes"]
    assert schemes["adminToken"]["scheme"] == "bearer"
    assert "loopback" in schemes["adminToken"]["description"]
    assert schemes["apiKey"]["scheme"] == "bearer"
    assert schemes["apiKeyHeader"] == {**schemes["apiKeyHeader"], "in": "header", "name": "X-API-Key"}


def resolve(response: dict) -> dict:
    if "$ref" in response:
        return DOC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return response


def schema_validator(schema: dict):
    """A JSON Schema 2020-12 validator for `schema`, its $refs resolved in the document."""
    return jsonschema.Draft202012Validator({"components": DOC["components"], "allOf": [schema]})


def documented_examples():
    for path, method, operation in operations():
        media = dict(operation.get("requestBody", {}).get("content", {}))
        for status, response in operation["responses"].items():
            media.update({f"{status} {kind}": value for kind, value in resolve(response).get("content", {}).items()})
        for kind, value in media.items():
            if "example" in value:
                yield f"{method} {path} {kind}", value["schema"], value["example"]


def test_every_example_fits_its_schema():
    examples = list(documented_examples())
    assert len(examples) >= 15
    for where, schema, example in examples:
        errors = list(schema_validator(schema).iter_errors(example))
        assert not errors, f"{where}: {errors[0].message}"


def assert_same_predictions(got: list, documented: list) -> None:
    assert [(p["label"], p["index"]) for p in got] == [(p["label"], p["index"]) for p in documented]
    assert [p["confidence"] for p in got] == pytest.approx([p["confidence"] for p in documented], abs=2e-3)


def test_examples_are_what_the_default_model_answers(lite0, images):
    documented = DOC["paths"]["/infer"]["post"]["responses"]["200"]["content"]["application/json"]["example"]
    answer = requests.post(f"{lite0.url}/infer?top_k=3", files={"file": ("cat.jpg", images["cat.jpg"])}, timeout=30)
    assert_same_predictions(answer.json()["predictions"], documented["predictions"])

    operation = DOC["paths"]["/v2/models/{model}/infer"]["post"]
    request = operation["requestBody"]["content"]["application/json"]["example"]
    documented = operation["responses"]["200"]["content"]["application/json"]["example"]
    answer = requests.post(f"{lite0.url}/v2/models/{MODEL}/infer", json=request, timeout=30).json()
    assert answer["id"] == documented["id"] and answer["outputs"][0]["shape"] == [1, 3]

    def parsed(rows):
        return [dict(zip(("confidence", "index", "label"), (float(s), int(i), label)))
                for s, i, label in (row.split(":", 2) for row in rows)]
    assert_same_predictions(parsed(answer["outputs"][0]["data"]), parsed(documented["outputs"][0]["data"]))


def test_served_document_is_the_generated_one(lite0):
    answer = requests.get(f"{lite0.url}/openapi.json", timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    assert answer.json() == json.loads(json.dumps(DOC))


def test_docs_false_turns_both_off_for_every_method(serve, tiny_model_dir):
    server = serve(config_for(tiny_model_dir, server={"docs": "false"}, logging={"access_log": "false"}))
    for method in ("GET", "HEAD", "POST", "DELETE"):
        for path in ("/docs", "/openapi.json"):
            answer = requests.request(method, f"{server.url}{path}", timeout=10)
            assert answer.status_code == 404, (method, path)
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200


def test_page_policy_allows_only_its_own_inline_script_and_style(lite0):
    answer = requests.get(f"{lite0.url}/docs", timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "text/html; charset=utf-8"
    policy = dict(part.strip().split(" ", 1) for part in answer.headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    assert policy["img-src"] == "'self' blob: data:" and policy["frame-ancestors"] == "'none'"
    html = answer.text
    for directive, tag in (("script-src", "script"), ("style-src", "style")):
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        assert len(blocks) == 1
        digest = base64.b64encode(__import__("hashlib").sha256(blocks[0].encode()).digest()).decode()
        assert policy[directive] == f"'sha256-{digest}'"
    assert "unsafe" not in answer.headers["Content-Security-Policy"]
    # Nothing the page could fetch from elsewhere: no absolute or protocol-relative URL at all.
    assert not re.search(r"https?:|[\"'(=]\s*//", html)
    assert len(answer.content) < 16_000


def test_page_and_document_ship_in_the_wheel(tmp_path):
    """`pip install .` (make install, systemd/install.sh, the container's wheels) carries docs.html."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    shutil.copytree(REPO / "inferd", source / "inferd", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "wheels"), str(source)], check=True, timeout=300)
    (wheel,) = (tmp_path / "wheels").glob("inferd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"inferd/routes/docs.html", "inferd/routes/docs.py", "inferd/routes/openapi.py"} <= set(names)


# -- what schemathesis found (tests/protocols/test_openapi_schemathesis.py), kept as regressions ----------------

def test_an_empty_query_value_counts_as_absent_as_documented(lite0, images):
    """`GET /metrics?format=` answered JSON while the document allowed only the three names: the
    server's query parser drops empty values, so the document says allowEmptyValue."""
    assert all(p.get("allowEmptyValue") for _, _, op in operations() for p in op.get("parameters", [])
               if p["in"] == "query")
    answer = requests.get(f"{lite0.url}/metrics?format=", timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    answer = requests.post(f"{lite0.url}/infer?top_k=&model=", files={"file": ("cat.jpg", images["cat.jpg"])}, timeout=30)
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 5


def test_an_empty_file_and_a_form_without_files_are_400(lite0):
    """An empty file part (generated for a bare `format: binary`) and a batch with no part at all:
    400s that the document lists; the upload schemas now say minItems 1 and name the image types."""
    answer = requests.post(f"{lite0.url}/infer", files={"file": ("empty.jpg", b"")}, timeout=10)
    assert (answer.status_code, answer.json()) == (400, {"error": "empty image"})
    answer = requests.post(f"{lite0.url}/infer/batch", data={"other": "x"}, files={"unrelated": ("a", b"")}, timeout=10)
    assert answer.status_code == 400 and "file parts named 'files'" in answer.json()["error"]
    batch = DOC["paths"]["/infer/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert batch["schema"]["properties"]["files"]["minItems"] == 1
    assert batch["encoding"]["files"]["contentType"] == "image/*"
    assert {"400"} <= set(DOC["paths"]["/infer/batch"]["post"]["responses"])


def test_form_field_names_with_control_characters_are_rejected_and_documented_so(lite0, images):
    """Other form fields are ignored, but a part header with a control character is a 400; the
    form schemas say so with propertyNames."""
    schema = DOC["paths"]["/infer"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    validator = schema_validator(schema)
    assert validator.is_valid({"file": "x", "caption\t": "tab is fine"})
    assert not validator.is_valid({"file": "x", "bad\x19name": "y"})
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"bad\x19name\"\r\n\r\ny\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cat.jpg\"\r\n\r\n").encode() \
        + images["cat.jpg"] + f"\r\n--{boundary}--\r\n".encode()
    answer = requests.post(f"{lite0.url}/infer", data=body, timeout=10,
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert (answer.status_code, answer.json()) == (400, {"error": "control character in a part header line"})


def v2_example() -> dict:
    return json.loads(json.dumps(
        DOC["paths"]["/v2/models/{model}/infer"]["post"]["requestBody"]["content"]["application/json"]["example"]))


def test_v2_header_length_with_a_json_body_is_honoured_so_it_is_not_a_json_parameter(lite0):
    """Inference-Header-Content-Length splits any body (as Triton does): sent with a JSON body that
    it cuts short, a 400. The document describes it with the binary extension, in text only."""
    answer = requests.post(f"{lite0.url}/v2/models/{MODEL}/infer", json=v2_example(), timeout=10,
                           headers={"Inference-Header-Content-Length": "1"})
    assert answer.status_code == 400 and answer.json()["error"].startswith("the body is not JSON")
    operation = DOC["paths"]["/v2/models/{model}/infer"]["post"]
    assert all(p["in"] == "path" for p in operation["parameters"])
    assert "Inference-Header-Content-Length" in operation["description"]


def test_v2_null_outputs_and_id_mean_absent_as_documented(lite0):
    request = {**v2_example(), "outputs": None, "id": None}
    answer = requests.post(f"{lite0.url}/v2/models/{MODEL}/infer", json=request, timeout=30)
    assert answer.status_code == 200
    assert answer.json()["outputs"][0]["shape"] == [1, 1000] and "id" not in answer.json()
    assert schema_validator(operation_schema("/v2/models/{model}/infer")).is_valid(request)


def operation_schema(path: str) -> dict:
    return DOC["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


@pytest.mark.parametrize("value", ["true", 1, None, {}])
def test_v2_binary_data_output_must_be_a_boolean(lite0, value):
    """A server fix: a non-boolean binary_data_output was read as false (JSON outputs) where
    the output-level binary_data was already checked; now both are a 400."""
    request = {**v2_example(), "parameters": {"binary_data_output": value}}
    answer = requests.post(f"{lite0.url}/v2/models/{MODEL}/infer", json=request, timeout=30)
    assert (answer.status_code, answer.json()) == (400, {"error": "binary_data_output must be true or false"})
    assert not schema_validator(operation_schema("/v2/models/{model}/infer")).is_valid(request)


def test_v2_example_is_a_real_image(lite0):
    """The first example's b64 was a placeholder ("/9j/4AAQSkZJRg..."): a 400 for anyone who tried it."""
    (element,) = v2_example()["inputs"][0]["data"]
    assert base64.b64decode(element["b64"], validate=True).startswith(b"\xff\xd8\xff")
    assert requests.post(f"{lite0.url}/v2/models/{MODEL}/infer", json=v2_example(), timeout=30).status_code == 200
