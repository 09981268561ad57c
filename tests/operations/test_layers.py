"""Calls only go down the layers of the design (DESIGN.md): no module of inferd/ imports one of a
layer above its own (imports under `if TYPE_CHECKING:` name types for the reader and are not
counted). The layers, top first; a module is in the first layer whose prefix it starts with."""

from __future__ import annotations

import ast

from tests.support import REPO

LAYERS = (
    ("entry points", ("inferd.cli", "inferd.__main__", "inferd.tools")),
    ("lifecycle", ("inferd.daemon", "inferd.control", "inferd.site")),
    ("connections and wire", ("inferd.http.server", "inferd.http.connections", "inferd.http.handlers",
                              "inferd.http.inbox", "inferd.http.parking", "inferd.http.gate",
                              "inferd.http.exchange", "inferd.http.router", "inferd.http.body")),
    ("routes", ("inferd.routes",)),
    ("service", ("inferd.service", "inferd.lease", "inferd.keys", "inferd.cache")),
    ("repository and loading", ("inferd.loading", "inferd.repository", "inferd.bounded")),
    ("model", ("inferd.batcher", "inferd.model", "inferd.providers", "inferd.optimized")),
    ("preprocessing", ("inferd.imaging",)),
    ("the HTTP layer's parsers and values", ("inferd.http",)),
    ("values everyone reads", ("inferd.manifest", "inferd.config", "inferd.metrics", "inferd.files",
                               "inferd.names", "inferd.cpus", "inferd.libc", "inferd.systemd", "inferd")),
)


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of tests/operations/test_layers.py")


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def run_time_imports(path) -> set[str]:
    """The inferd modules `path` imports, leaving out `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("inferd"):
                found |= {f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("inferd")}
    return found


def _is_module(name: str) -> bool:
    relative = REPO.joinpath(*name.split("."))
    return relative.with_suffix(".py").exists() or (relative / "__init__.py").exists()


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): run_time_imports(path) for path in sorted((REPO / "inferd").rglob("*.py"))}


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
              for module, targets in import_graph().items() for target in sorted(targets)
              if layer_of(target) < layer_of(module)]
    assert not upward, "\n".join(upward)


def test_the_routes_reach_the_model_only_through_the_service():
    allowed = ("inferd.http", "inferd.routes", "inferd.service", "inferd.lease", "inferd.names")
    reaching = [f"{module} imports {target}" for module, targets in import_graph().items()
                if module.startswith("inferd.routes") for target in sorted(targets)
                if target != "inferd" and not target.startswith(allowed)]
    assert not reaching, "\n".join(reaching)


def test_the_http_layer_knows_nothing_below_it():
    """inferd/http/ reads and writes HTTP for any route table: it imports only itself (the routes
    and the service are handed to it), so the wire never depends on what is served."""
    reaching = [f"{module} imports {target}" for module, targets in import_graph().items()
                if module.startswith("inferd.http") for target in sorted(targets)
                if target != "inferd" and not target.startswith("inferd.http")]
    assert not reaching, "\n".join(reaching)
