"""The house stays as drawn in docs/architecture.md: an AST scan of every module's imports.

A module may import from its own package and from lower layers only; sibling packages of one layer stay
independent (except in the foundation and among the products, whose modules are small and layered by use);
no module reaches for another module's private name; and the modules' top-level imports have no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fusionfeat"

# Bottom to top, as drawn in docs/architecture.md. A unit is a top-level module or a subpackage of fusionfeat.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("foundation", frozenset({"errors", "fsio", "runtime", "progress", "paper", "interrupts"})),
    ("data, encoders, statistics, protocols", frozenset({"data", "encoders", "stats", "protocols"})),
    ("store", frozenset({"store"})),
    ("engines and heads", frozenset({"engines", "heads"})),
    ("evaluation", frozenset({"evaluation"})),
    ("report", frozenset({"report"})),
    ("products", frozenset({"bundle", "train", "predict", "explain", "info", "demo", "study", "study_multiclass",
                             "evaluate"})),
    ("command line", frozenset({"cli"})),
)
OPEN_LAYERS = {"foundation", "products"}  # layers whose units may import each other
FACADE = {"__init__", "__main__"}  # the lazy public API and `python -m fusionfeat`: above every layer


def _layer_of(unit: str) -> int:
    for i, (_, units) in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"fusionfeat.{unit} is in no layer: add it to LAYERS and to docs/architecture.md")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str, top_level_only: bool = False) -> list[tuple[str, list[str], int]]:
    """``(imported module, names taken from it, line)`` for every fusionfeat import of a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "fusionfeat"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] == "fusionfeat":
                out.append((base, [a.name for a in node.names], node.lineno))
    return out


MODULES = _modules()


def test_every_unit_is_in_a_layer():
    units = {_unit(m) for m in MODULES} - FACADE
    for unit in units:
        _layer_of(unit)
    drawn = set().union(*(u for _, u in LAYERS))
    assert drawn <= units, f"LAYERS names units that do not exist: {sorted(drawn - units)}"


def _layer_problems(module: str, path: Path) -> list[str]:
    unit = _unit(module)
    layer = _layer_of(unit)
    bad = []
    for target, names, line in _imports(path, module):
        if target == "fusionfeat":  # the root package: its version and lazy API, no imports of its own
            targets = [f"fusionfeat.{n}" for n in names if f"fusionfeat.{n}" in MODULES]
        else:
            targets = [target]
        for imported in targets:
            other = _unit(imported)
            if other in FACADE:
                continue
            other_layer = _layer_of(other)
            if other_layer > layer:
                bad.append(f"line {line}: {imported} is in a higher layer ({LAYERS[other_layer][0]})")
            elif other_layer == layer and other != unit and LAYERS[layer][0] not in OPEN_LAYERS:
                bad.append(f"line {line}: {imported} is a sibling package of the same layer ({LAYERS[layer][0]})")
    return bad


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _unit(m) not in FACADE))
def test_no_upward_or_sideways_import(module):
    bad = _layer_problems(module, MODULES[module])
    assert not bad, f"{module} ({LAYERS[_layer_of(_unit(module))][0]}):\n" + "\n".join(bad)


def _private_problems(module: str, path: Path) -> list[str]:
    bad = [f"line {line}: {name} from {target}" for target, names, line in _imports(path, module)
           if target != module for name in names if name.startswith("_") and not name.startswith("__")]
    tree = ast.parse(path.read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({(a.asname or a.name): a.name for a in node.names if a.name.startswith("fusionfeat")})
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fusionfeat"):
            aliases.update({(a.asname or a.name): f"{node.module}.{a.name}" for a in node.names
                            if f"{node.module}.{a.name}" in MODULES})
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            bad.append(f"line {node.lineno}: {node.value.id}.{node.attr} ({aliases[node.value.id]})")
    return bad


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_of_another_module(module):
    bad = _private_problems(module, MODULES[module])
    assert not bad, f"{module} uses private names of other modules:\n" + "\n".join(bad)


def _find_cycle(modules: dict[str, Path]) -> list[str] | None:
    """One cycle of top-level imports among ``modules``, or None."""
    graph = {}
    for module, path in modules.items():
        edges = set()
        for target, names, _ in _imports(path, module, top_level_only=True):
            edges |= {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}
            if target in modules and target != module:
                edges.add(target)
        graph[module] = edges - {module}
    # a package's __init__ re-exporting its own modules is not a cycle of the modules themselves
    for module in graph:
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, trail + [nxt])):
                return cycle
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_module_imports_have_no_cycle():
    cycle = _find_cycle(MODULES)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_scan_catches_what_it_forbids(tmp_path):
    """The checks are not vacuous: a planted upward import, sideways import, private name and cycle are found."""
    root = tmp_path / "fusionfeat"
    (root / "store").mkdir(parents=True)
    (root / "engines").mkdir()
    up = root / "store" / "x.py"
    up.write_text("from fusionfeat.evaluation.cv import cross_validate\nfrom fusionfeat.fsio import _private\n"
                  "from ..heads import zoo\n")
    problems = _layer_problems("fusionfeat.store.x", up)
    assert len(problems) == 2 and "fusionfeat.evaluation.cv" in problems[0] and "fusionfeat.heads" in problems[1]
    assert _private_problems("fusionfeat.store.x", up) == ["line 2: _private from fusionfeat.fsio"]
    sideways = root / "engines" / "y.py"
    sideways.write_text("import fusionfeat.heads.zoo as z\nz._build()\n")
    assert "sibling package" in _layer_problems("fusionfeat.engines.y", sideways)[0]
    assert _private_problems("fusionfeat.engines.y", sideways) == ["line 2: z._build (fusionfeat.heads.zoo)"]
    a, b = root / "engines" / "a.py", root / "engines" / "b.py"
    a.write_text("from fusionfeat.engines.b import f\n")
    b.write_text("import fusionfeat.engines.a\n")
    assert _find_cycle({"fusionfeat.engines.a": a, "fusionfeat.engines.b": b}) == [
        "fusionfeat.engines.a", "fusionfeat.engines.b", "fusionfeat.engines.a"]
    clean = MODULES["fusionfeat.store.reader"]
    assert _layer_problems("fusionfeat.store.reader", clean) == [] and _private_problems(
        "fusionfeat.store.reader", clean) == []
