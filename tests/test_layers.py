"""The package graph is layered: a package imports only its own layer and the layers below it.

Why: an import that runs back up ties packages into one knot, so a newcomer cannot change or
test `models` without `training`, and a cycle waits for the first module-level import to turn
into an `ImportError`. The rule is checked on the source (AST), not by importing: every
`import lorakiln.x…` and `from lorakiln.x… import …`, relative forms (`from . import x`,
`from ..x import y`) and `importlib.import_module("lorakiln.x…")` with a literal name, at module
level *and* inside functions or `if TYPE_CHECKING:` blocks. A lazy import is still a dependency:
it only moves the failure to run time.

The order, bottom to top, follows what each package needs:

* shared utilities (errors, atomic writes, the output guard, safetensors checks) need nothing;
* `models` (families, loading, text conditioning, LDM name tables, the toy model's location);
* `networks` (adapters on a model), then `data` (datasets, captions, caches);
* `config`: the run description and its checks read the hub-id rule from `models` and count a
  kohya regularisation folder through `data`, while no model, network or data code reads a
  config, so the libraries stay config-agnostic;
* `inference`, then `training` (training renders its samples with inference);
* the front ends on top (`prep`, `captioning`, `lora_tools`, `toyworld`, `ui`, `cli`), which may
  import each other only along the edges listed in `TOP_LAYER_EDGES`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "lorakiln"

#: Layer of each top-level module or package of `lorakiln`, bottom (0) to top.
LAYERS: dict[str, int] = {
    **dict.fromkeys(("__init__", "__main__", "errors", "atomic", "io_guard", "safetensors_check"), 0),
    "models": 1,
    "networks": 2,
    "data": 3,
    "config": 4,
    "inference": 5,
    "training": 6,
    **dict.fromkeys(("prep", "captioning", "lora_tools", "toyworld", "ui", "cli"), 7),
}
TOP = 7

#: Imports among the front ends, and the one upward edge: `python -m lorakiln` runs the CLI.
TOP_LAYER_EDGES: frozenset[tuple[str, str]] = frozenset({
    ("__main__", "cli"),
    # The CLI dispatches to every front end's command.
    ("cli", "captioning"), ("cli", "lora_tools"), ("cli", "prep"), ("cli", "toyworld"), ("cli", "ui"),
    # The web UI's tabs run the same front-end functions as the CLI verbs.
    ("ui", "captioning"), ("ui", "lora_tools"), ("ui", "prep"),
})  # fmt: skip


@dataclass(frozen=True)
class Edge:
    """One import of another `lorakiln` package: where it is, and which packages it joins."""

    file: str  # relative to src/lorakiln
    line: int
    source: str  # top-level package (or module) of the importing file
    target: str  # top-level package (or module) imported
    name: str  # the imported module, dotted

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.source} -> {self.target} ({self.name})"


def _package_of(relative: Path) -> list[str]:
    """Dotted package path that a relative import in `relative` starts from."""
    parts = ["lorakiln", *relative.with_suffix("").parts]
    return parts[:-1]  # a module's package; for `__init__.py` the package itself


def _imported_names(node: ast.AST, package: list[str]) -> list[str]:
    """Absolute dotted names of the `lorakiln` modules an AST node imports (empty if none)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = ".".join(package[: len(package) - node.level + 1])
            module = f"{base}.{node.module}" if node.module else base
        else:
            module = node.module or ""
        # `from lorakiln import x` / `from . import x` may import submodules: name each one.
        if module.count(".") < 1 or not node.module:
            return [f"{module}.{alias.name}" for alias in node.names]
        return [module]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return [node.args[0].value]
    return []


def _top_level(name: str) -> str:
    """The module or package `lorakiln.<name>` lives in: `from lorakiln import __version__`
    imports an attribute of `lorakiln/__init__.py`, not a module of its own."""
    return name if (ROOT / name).is_dir() or (ROOT / f"{name}.py").is_file() else "__init__"


def edges_in(source: str, relative: Path) -> list[Edge]:
    """Every import of another top-level `lorakiln` package in one module's source."""
    origin = relative.parts[0].removesuffix(".py")
    package = _package_of(relative)
    out = []
    for node in ast.walk(ast.parse(source, filename=str(relative))):
        for name in _imported_names(node, package):
            parts = name.split(".")
            if parts[0] != "lorakiln" or len(parts) < 2:
                continue
            target = _top_level(parts[1])
            if target != origin:
                out.append(Edge(relative.as_posix(), node.lineno, origin, target, name))
    return out


def all_edges() -> list[Edge]:
    return [edge for path in sorted(ROOT.rglob("*.py"))
            for edge in edges_in(path.read_text(encoding="utf-8"), path.relative_to(ROOT))]


def violations(edges: list[Edge]) -> list[Edge]:
    """Edges from a lower layer to a higher one, and front-end edges not in `TOP_LAYER_EDGES`."""
    bad = []
    for edge in edges:
        src, dst = LAYERS[edge.source], LAYERS[edge.target]
        allowed = (edge.source, edge.target) in TOP_LAYER_EDGES
        if not allowed and (dst > src or (src == dst == TOP)):
            bad.append(edge)
    return bad


def test_every_package_has_a_layer() -> None:
    """A new package must be placed deliberately, not fall through the check."""
    tops = {p.name.removesuffix(".py") for p in ROOT.iterdir()
            if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert sorted(tops - LAYERS.keys()) == [], "add the new package to LAYERS in tests/test_layers.py"
    assert sorted({e.target for e in all_edges()} - LAYERS.keys()) == []


def test_no_import_runs_up_the_layers() -> None:
    bad = violations(all_edges())
    assert not bad, "imports that run up the layers (move the shared code down instead):\n" + "\n".join(
        map(str, bad))


def test_listed_front_end_edges_still_exist() -> None:
    """A listed edge that is gone is removed from the list, so the list never allows more than it must."""
    used = {(e.source, e.target) for e in all_edges()}
    assert sorted(TOP_LAYER_EDGES - used) == []


@pytest.mark.parametrize("line", [
    "from lorakiln.training.loop import train",
    "import lorakiln.training.loop",
    "from lorakiln import training",
    "from .. import training",
    "from ..training.loop import train",
    "def f():\n    from lorakiln.training import loop",
    "import importlib\nimportlib.import_module('lorakiln.training.loop')",
])
def test_an_upward_import_in_any_form_is_reported(line: str) -> None:
    """The checker itself: `models` importing `training` is caught, at the right file and line."""
    edges = edges_in(line, Path("models") / "example.py")
    bad = violations(edges)
    assert [(e.file, e.source, e.target) for e in bad] == [("models/example.py", "models", "training")]
    assert bad[0].line == line.count("\n") + 1


def test_relative_imports_resolve_from_the_package() -> None:
    """`from . import x` in a package's `__init__` stays inside the package."""
    assert edges_in("from . import loop\nfrom .loop import train", Path("training") / "__init__.py") == []
    sub = Path("training") / "sub" / "__init__.py"
    assert edges_in("from ..models import loading", sub) == []  # lorakiln.training.models
    edges = edges_in("from ...models import loading", sub)
    assert [(e.source, e.target, e.name) for e in edges] == [("training", "models", "lorakiln.models")]
