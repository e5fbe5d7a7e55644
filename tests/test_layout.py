"""The package's layers import only downwards, and its modules import each other without cycles.

Every `sdtgen` import in every module under sdtgen/ counts, at module level or inside a
function (a lazy import is still a dependency). A module may import from its own layer or a
lower one; within a layer the module graph must still be acyclic. A new module must be
given a layer here, where docs/architecture.md's reader will find it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sdtgen"

# Low to high. An entry names a module, or a package and everything under it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("sdtgen.models", "sdtgen.class_names", "sdtgen.distributed"),
    ("sdtgen.diffusion", "sdtgen.vae", "sdtgen.data"),
    (
        "sdtgen.config",
        "sdtgen.pipeline",
        "sdtgen.generation",
        "sdtgen.decay_maps",
        "sdtgen.decay_content",
        "sdtgen.convert",
    ),
    ("sdtgen.runs", "sdtgen.model_card"),
    ("sdtgen.evaluation",),
    ("sdtgen.training",),
    ("sdtgen.cli",),  # every command and flag name
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


# `sdtgen` itself (sdtgen/__init__.py), which lends SDTDiT and SDTPipeline from layers 1 and 3.
ROOT_LAYER = 3


def layer_of(module: str) -> int | None:
    """The layer of the longest entry that is `module` or a package holding it."""
    if module == "sdtgen":
        return ROOT_LAYER
    best: tuple[int, int] | None = None  # (entry length, layer)
    for layer, entries in enumerate(LAYERS, start=1):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and (best is None or len(entry) > best[0]):
                best = (len(entry), layer)
    return None if best is None else best[1]


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The sdtgen modules `module` imports: `from a import b` counts as a.b when that is a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up from this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {name for name in found if name == "sdtgen" or name.startswith("sdtgen.")}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {module: imported_modules(module, path, modules) - {module} for module, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer():
    unplaced = [module for module in all_modules() if layer_of(module) is None]
    assert not unplaced, f"modules with no layer (add them to LAYERS in tests/test_layout.py): {unplaced}"


def test_every_layer_entry_names_a_module():
    modules = all_modules()
    stale = [
        entry
        for entries in LAYERS
        for entry in entries
        if not any(module == entry or module.startswith(entry + ".") for module in modules)
    ]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_imports_go_to_the_same_or_a_lower_layer():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if None not in (layer_of(module), layer_of(target)) and layer_of(target) > layer_of(module)
    ]
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(component) for component in found)


def test_the_checker_resolves_imports_and_finds_cycles(tmp_path):
    modules = {"sdtgen.a": Path(), "sdtgen.a.b": Path(), "sdtgen.c": Path()}
    source = tmp_path / "m.py"
    source.write_text(
        "import os\nfrom . import b\nfrom .b import x\ndef f():\n    from sdtgen.c import y\n    import sdtgen\n"
    )
    assert imported_modules("sdtgen.a.m", source, modules) == {"sdtgen.a.b", "sdtgen.c", "sdtgen"}
    assert cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [["x", "y", "z"]]
    assert layer_of("sdtgen.models.dit") == 1 and layer_of("sdtgen") == 3 and layer_of("sdtgen.cli.train") == 7
    assert layer_of("sdtgen.nowhere") is None
