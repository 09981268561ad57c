"""The OpenAPI 3.1 document, built from the route table the router dispatches on.

`document()` is a pure function: every path and method of ROUTES, each described by the
`Operation` kept next to its handler (the *_spec modules), plus what the HTTP layer answers for
any route (a malformed head, 408, 414, 417, 431, the thread cap's 503; 411 and 413 where a body is
read) and what each route's guard adds (the admin security scheme). A handler or guard without a
description raises `Undocumented`, so a new route cannot be missing from the document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from ..http.messages import DISCARD, READ, Route

OPENAPI_VERSION = "3.1.0"
ERROR_SCHEMA = {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}},
    "description": 'Every error inferd answers with: {"error": "<message for people>"}.',
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                               "schema": {"type": "integer", "minimum": 0}}}


class Undocumented(LookupError):
    """A handler or guard of the route table has no description."""


@dataclass(frozen=True)
class Operation:
    """One handler, as the document describes it. path_parameters: name -> (description, example),
    for the "{name}" segments of every path the handler serves; parameters: OpenAPI Parameter objects
    (query, header); responses: status -> OpenAPI Response object."""

    summary: str
    tag: str
    responses: Mapping[int, dict]
    description: str = ""
    path_parameters: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # name -> (description, example)
    parameters: tuple[dict, ...] = ()
    request_body: dict | None = None


@dataclass(frozen=True)
class Guard:
    """What a guard (a check before routing for a path prefix, or a route's own) adds to its operations."""

    responses: Mapping[int, dict]
    security: tuple[dict, ...] = ()


def json_content(schema: dict, example=None) -> dict:
    media = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def answer(description: str, schema: dict, example=None, headers: Mapping | None = None) -> dict:
    """A JSON response object."""
    response = {"description": description, "content": json_content(schema, example)}
    if headers:
        response["headers"] = dict(headers)
    return response


def error(description: str, headers: Mapping | None = None) -> dict:
    """A response object whose body is the Error schema."""
    return answer(description, ref("Error"), headers=headers)


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def query(name: str, description: str, schema: dict) -> dict:
    """An optional query parameter. `?name=` counts as absent (the server's query parser drops
    empty values), which OpenAPI says with allowEmptyValue."""
    return {"name": name, "in": "query", "required": False, "allowEmptyValue": True, "description": description,
            "schema": schema}


# What the HTTP layer answers for any route, before or around its handler: components/responses,
# referred to by name from every operation.
ANY_ROUTE = {
    400: ("Malformed", error("The request is not well-formed HTTP/1.1 (request line, headers, framing).")),
    408: ("TooSlow", error("The request head or body did not arrive in time ([limits] header_timeout, "
                           "body_timeout).")),
    414: ("RequestLineTooLong", error("The request line is longer than [limits] max_request_line.")),
    417: ("ExpectationFailed", error("An Expect header other than 100-continue.")),
    431: ("HeadersTooLarge", error("Too many header lines, or too many header bytes ([limits] max_header_count, "
                                   "max_header_bytes).")),
    503: ("Busy", error("Busy: every handler thread of this kind of request is taken, or every connection is; "
                       "retry after Retry-After seconds.", RETRY_AFTER)),
}
LENGTH_REQUIRED = {411: ("LengthRequired", error("The request has a body but neither Content-Length nor "
                                                 "Transfer-Encoding: chunked."))}
BODY_TOO_LARGE = {413: ("BodyTooLarge", error("The body is larger than [limits] max_body_bytes (decided from "
                                              "Content-Length before reading)."))}
GENERAL = {name: response for table in (ANY_ROUTE, LENGTH_REQUIRED, BODY_TOO_LARGE) for name, response in table.values()}


def document(routes: Iterable[Route], guards: Iterable[tuple[str, Callable]],
             described: Mapping[Callable, Operation | Guard], *, version: str, info: Mapping,
             schemas: Mapping[str, dict], security_schemes: Mapping[str, dict], tags: Iterable[dict]) -> dict:
    """The OpenAPI 3.1 document of `routes`. Raises Undocumented for a handler or guard that
    `described` does not know."""
    paths: dict[str, dict] = {}
    names: set[str] = set()
    for route in routes:
        item = paths.setdefault(route.path, {})
        for method, handler in route.methods.items():
            checks = [check for prefix, check in guards if route.path.startswith(prefix)] + [route.guard] * bool(route.guard)
            guard_docs = [_described(described, check) for check in checks]
            item[method.lower()] = _operation(route, handler, _described(described, handler), guard_docs, names)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {**info, "version": version},
        "tags": list(tags),
        "paths": paths,
        "components": {"schemas": {"Error": ERROR_SCHEMA, **schemas}, "responses": GENERAL,
                       "securitySchemes": dict(security_schemes)},
    }


def _described(described: Mapping, function: Callable):
    try:
        return described[function]
    except KeyError:
        raise Undocumented(f"{function.__module__}.{function.__qualname__} has no description "
                           "for the OpenAPI document") from None


def _operation(route: Route, handler: Callable, doc: Operation, guards: list[Guard], names: set[str]) -> dict:
    operation = {"operationId": _operation_id(handler, route.path, names), "tags": [doc.tag], "summary": doc.summary}
    if doc.description:
        operation["description"] = doc.description
    parameters = _path_parameters(route.path, doc) + list(doc.parameters)
    if parameters:
        operation["parameters"] = parameters
    if doc.request_body is not None:
        operation["requestBody"] = doc.request_body
    operation["responses"] = _responses(route, doc, guards)
    security = [requirement for guard in guards for requirement in guard.security]
    if security:
        operation["security"] = security
    return operation


def _responses(route: Route, doc: Operation, guards: list[Guard]) -> dict:
    """The HTTP layer's statuses (by reference), then the guards' and the handler's own."""
    general = {**ANY_ROUTE, **_body_responses(route.body)}
    specific = {}
    for extra in [guard.responses for guard in guards] + [doc.responses]:
        specific.update(extra)
    responses = {status: {"$ref": f"#/components/responses/{name}"} for status, (name, _) in general.items()}
    for status, response in specific.items():
        responses[status] = _merge(general[status][1], response) if status in general else response
    return {str(status): responses[status] for status in sorted(responses)}


def _merge(general: dict, specific: dict) -> dict:
    """One status answered for two reasons (a route's own 503 and the thread cap's): both
    descriptions, either body, the headers of both."""
    merged = {**general, **specific, "description": f"{specific['description']} Or: {general['description']}"}
    content = _either_content(specific.get("content", {}), general.get("content", {}))
    if content:
        merged["content"] = content
    headers = {**general.get("headers", {}), **specific.get("headers", {})}
    if headers:
        merged["headers"] = headers
    return merged


def _either_content(first: dict, second: dict) -> dict:
    content = {}
    for media in {**second, **first}:
        schemas = [c[media]["schema"] for c in (first, second) if media in c]
        one = len(schemas) == 1 or schemas[0] == schemas[1]
        content[media] = {**first.get(media, {}), "schema": schemas[0] if one else {"anyOf": schemas}}
    return content


def _body_responses(body: str) -> dict:
    return {**LENGTH_REQUIRED, **BODY_TOO_LARGE} if body == READ else BODY_TOO_LARGE if body == DISCARD else {}


def _path_parameters(path: str, doc: Operation) -> list[dict]:
    parameters = []
    for name in re.findall(r"\{([^}]+)\}", path):
        if name not in doc.path_parameters:
            raise Undocumented(f"{path}: path parameter {name!r} has no description")
        description, example = doc.path_parameters[name]
        parameters.append({"name": name, "in": "path", "required": True, "description": description,
                           "schema": {"type": "string", "minLength": 1}, "example": example})
    return parameters


def _operation_id(handler: Callable, path: str, taken: set[str]) -> str:
    """The handler's name; a handler that serves several paths gets its name and the path's last
    parameter for the later ones (model_metadata, model_metadata_version)."""
    name = handler.__name__
    if name in taken:
        name = f"{name}_{(re.findall(r'{([^}]+)}', path) or [path.strip('/').replace('/', '_')])[-1]}"
    taken.add(name)
    return name
