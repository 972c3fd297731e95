"""The import graph of src/promptloop: no cycle, and every import goes down a layer.

Every import counts: module level, inside functions, and under `if TYPE_CHECKING:`. The layers,
bottom to top, are LAYERS below; packages on one layer (the four stages, say) never import each
other. The checker is tested on a small package of its own, so a broken checker cannot pass.
"""

from __future__ import annotations

import ast
import graphlib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Bottom to top. "promptloop" is the root package (its __init__), "cli" the module promptloop.cli.
LAYERS: list[set[str]] = [
    {"promptloop"},
    {"core"},
    {"llm"},
    {"domain"},
    {"workspace"},
    {"quality"},
    {"evaluate"},
    {"collect", "analyze", "improve", "deploy"},
    {"loop", "ops"},
    {"demo"},
    {"cli"},
    {"flows"},
]


@dataclass(frozen=True)
class Edge:
    """`importer` imports `imported` at `line` of the importer's file."""

    importer: str
    imported: str
    line: int


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of the package in `root` (a package is its __init__)."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_names(tree: ast.AST, importer: str, is_package: bool) -> list[tuple[str, int]]:
    """Every (dotted name, line) a module imports, wherever the import statement sits."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = importer.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
            found.append((base, node.lineno))
    return found


def import_edges(root: Path, package: str) -> list[Edge]:
    """Edges between the package's own modules; importing a.b.c also runs the __init__ of a and a.b."""
    modules = module_names(root, package)
    edges = set()
    for importer, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for name, line in imported_names(tree, importer, path.name == "__init__.py"):
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                target = ".".join(parts[:end])
                if target in modules and target != importer:
                    edges.add(Edge(importer, target, line))
    return sorted(edges, key=lambda e: (e.importer, e.imported, e.line))


def find_cycle(edges: list[Edge]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.imported)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def unit_of(module: str) -> str:
    """The layered unit a module belongs to: its first sub-package (or the root package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_problems(edges: list[Edge], layers: list[set[str]]) -> list[str]:
    """Imports that go up a layer, sideways between units of one layer, or into an unplaced unit."""
    level = {unit: index for index, units in enumerate(layers) for unit in units}
    problems = []
    for edge in edges:
        source, target = unit_of(edge.importer), unit_of(edge.imported)
        if source == target:
            continue
        where = f"{edge.importer} imports {edge.imported} (line {edge.line})"
        if source not in level or target not in level:
            problems.append(f"{where}: {source if source not in level else target} is on no layer")
        elif level[target] > level[source]:
            problems.append(f"{where}: upwards, from layer {source} to {target}")
        elif level[target] == level[source]:
            problems.append(f"{where}: sideways between {source} and {target}")
    return problems


def test_the_package_has_no_import_cycle() -> None:
    assert find_cycle(import_edges(REPO / "src", "promptloop")) is None


def test_every_import_goes_down_a_layer() -> None:
    assert layer_problems(import_edges(REPO / "src", "promptloop"), LAYERS) == []


def test_every_package_is_on_a_layer() -> None:
    units = {unit_of(name) for name in module_names(REPO / "src", "promptloop")}
    assert units == set().union(*LAYERS) - {"flows"}


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_the_checker_finds_hidden_cycles_and_wrong_way_imports(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "",
        "pkg/low/base.py": "def f():\n    from pkg.high.top import g  # upwards, hidden in a function\n",
        "pkg/high/__init__.py": "",
        "pkg/high/top.py": "from pkg.low import base\n",
        "pkg/side/__init__.py": "",
        "pkg/side/peer.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..high import top\n",
    })
    edges = import_edges(root, "pkg")
    assert set(find_cycle(edges) or []) == {"pkg.low.base", "pkg.high.top"}
    assert layer_problems(edges, [{"pkg"}, {"low"}, {"high", "side"}]) == [
        "pkg.low.base imports pkg.high (line 2): upwards, from layer low to high",
        "pkg.low.base imports pkg.high.top (line 2): upwards, from layer low to high",
        "pkg.side.peer imports pkg.high (line 3): sideways between side and high",
        "pkg.side.peer imports pkg.high.top (line 3): sideways between side and high",
    ]


def test_the_flows_import_each_other_without_cycles() -> None:
    edges = import_edges(REPO, "flows")
    assert find_cycle(edges) is None
