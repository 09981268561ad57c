"""Method + path -> route, from the one route table; which thread pool a path is answered on."""

from __future__ import annotations

from typing import Callable, Iterable, Mapping
from urllib.parse import unquote

from .errors import HTTPError
from .messages import INFERENCE, OTHER, Handler, Route


class Router:
    """Matches parsed paths against the table: exact paths first, then patterns segment by
    segment ("{name}" matches one non-empty segment).

    guards: (path prefix, check(request, context)) pairs; a check runs before routing for every
    path under its prefix, known or not (an unauthorised client learns nothing of /admin/*).

    Path parameters are percent-decoded (RFC 3986 §2.1), the same way for every route: a segment
    is matched as it came, then decoded, so "%2F" in a model name is that name's "/", never a
    segment boundary."""

    def __init__(self, routes: Iterable[Route], guards: Iterable[tuple[str, Callable]] = ()):
        self.routes = tuple(routes)
        self.guards = tuple(guards)
        self._exact = {route.path: route for route in self.routes if "{" not in route.path}
        self._patterns = [(route, route.path.split("/")) for route in self.routes if "{" in route.path]

    def find(self, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route for `path` and its parameters, or None."""
        route = self._exact.get(path)
        if route is not None:
            return route, {}
        segments = path.split("/")
        for route, pattern in self._patterns:
            params = _match(pattern, segments)
            if params is not None:
                return route, params
        return None

    def guards_for(self, path: str) -> list[Callable]:
        return [check for prefix, check in self.guards if path.startswith(prefix)]

    def pool_for(self, path: str) -> str:
        found = self.find(path)
        return found[0].pool if found else OTHER

    def match(self, method: str, path: str) -> tuple[Route, Handler, dict[str, str]]:
        """The route, its handler for `method` (GET's for HEAD) and the path parameters.
        Raises HTTPError 404 for an unknown path, 405 (with Allow) for a method it does not take."""
        found = self.find(path)
        if found is None:
            raise HTTPError(404, "not found")
        route, params = found
        handler = route.methods.get("GET" if method == "HEAD" else method)
        if handler is None:
            raise HTTPError(405, f"method {method} is not allowed here", {"Allow": ", ".join(route.methods)})
        return route, handler, params

    def labels(self) -> tuple[str, ...]:
        """Every route's path: the metrics' route label values."""
        return tuple(route.path for route in self.routes)

    def inference_labels(self) -> tuple[str, ...]:
        return tuple(route.path for route in self.routes if route.pool == INFERENCE)


def _match(pattern: list[str], segments: list[str]) -> Mapping[str, str] | None:
    if len(pattern) != len(segments):
        return None
    params = {}
    for want, got in zip(pattern, segments):
        if want.startswith("{") and want.endswith("}"):
            if not got:
                return None
            params[want[1:-1]] = unquote(got)
        elif want != got:
            return None
    return params
