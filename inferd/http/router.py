"""Method + path -> route, from the one route table; which thread pool a path is answered on."""

from __future__ import annotations

from typing import Callable, Iterable, Mapping
from urllib.parse import unquote

from .errors import HTTPError
from .messages import INFERENCE, Handler, Route


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

    @staticmethod
    def handler(route: Route | None, method: str) -> Handler:
        """The handler of `route` (as the head gate found it) for `method`, GET's for HEAD. Raises
        HTTPError 404 when no route has the path, 405 (with Allow) for a method it does not take."""
        if route is None:
            raise HTTPError(404, "not found")
        handler = route.methods.get("GET" if method == "HEAD" else method)
        if handler is None:
            raise HTTPError(405, f"method {method} is not allowed here", {"Allow": ", ".join(route.methods)})
        return handler

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
