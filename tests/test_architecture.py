"""The package layout is the architecture: imports flow one way, there are no import cycles, and a
block's attention and MLP run in exactly one module (`anee.core.layer_step`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "anee"
# a module may import from its own subpackage and from any subpackage of a lower level
LEVELS = {"core": 0, "engine": 1, "hierarchical": 1, "granularity": 1, "evaluation": 2,
          "viz": 2, "cli": 3, "__main__": 4}
# every module is parsed with the running interpreter's grammar: a module it cannot parse breaks them all


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imported(name: str, path: Path) -> set[str]:
    """Modules of the package that `name` imports at module level (not inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("anee"):
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("anee"))
    return found & set(modules())


def area(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_parses_on_the_supported_pythons():
    bad = []
    for name, path in modules().items():
        try:
            ast.parse(path.read_text())
        except SyntaxError as e:
            bad.append(f"{name}:{e.lineno}: {e.msg}")
    assert not bad, bad


def test_imports_flow_one_way():
    bad = []
    for name, path in modules().items():
        mine = area(name)
        if mine is None:  # the top-level public API may re-export anything
            continue
        for dep in imported(name, path):
            theirs = area(dep)
            if theirs is not None and theirs != mine and LEVELS[theirs] >= LEVELS[mine]:
                bad.append(f"{name} -> {dep}")
    assert not bad, ("imports against the layering core < engine, hierarchical, granularity < evaluation, viz < cli:\n"
                     + "\n".join(bad))


def test_every_subpackage_has_a_level():
    assert {area(n) for n in modules()} - {None} == set(LEVELS)


def test_no_import_cycles():
    graph = {name: {d for d in imported(name, path) if d != name} for name, path in modules().items()}
    # a package's __init__ importing its own submodules is not a cycle through them
    for name in graph:
        graph[name] = {d for d in graph[name] if not d.startswith(name + ".")}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("pattern", [r"scaled_dot_product_attention\(", r"\.mlp\(layer", r"\.qkv\(layer",
                                     r"\.attn_out\(layer"])
def test_block_attention_and_mlp_run_in_one_place(pattern):
    """Adapters define the block pieces; only the layer step calls them."""
    hits = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if re.search(pattern, p.read_text())}
    assert hits == {"core/layer_step.py"}, hits


def test_no_registration_by_import_side_effect():
    """Methods are listed in one explicit registry, not registered by importing a module."""
    text = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    assert "register_method" not in text and "noqa: F401" not in text
    from anee.evaluation.methods import METHODS, baselines, controllers, hierarchical

    defined = {f for m in (baselines, controllers, hierarchical) for f in vars(m).values()
               if callable(f) and f in METHODS.values()}
    assert defined == set(METHODS.values())
