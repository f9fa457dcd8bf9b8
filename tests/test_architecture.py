"""The layers hold: toolkit <- models <- harness (sweep inside) <- analysis <- commands, and no import cycle.

Read from the sources (every `import` a module runs, at its top or inside a function, `python -m` entry points
included; `if TYPE_CHECKING:` blocks are annotations only), so a new import that breaks a layer fails here.
"""
import ast
import itertools
from pathlib import Path

from conftest import ROOT

PACKAGES = ("toolkit", "models", "harness", "analysis", "commands")
# What each layer may import of the project (itself always): docs/architecture.md, "The layers".
ALLOWED = {"toolkit": (), "models": ("toolkit",), "harness": ("toolkit", "models"),
           "analysis": ("toolkit", "models", "harness"), "commands": ("toolkit", "models", "harness", "analysis")}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (the longest known prefix of each imported name)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets += [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_every_layer_imports_only_the_layers_below_it():
    broken = [f"{a} -> {b}" for a, targets in graph().items() for b in targets
              if b.split(".")[0] != a.split(".")[0] and b.split(".")[0] not in ALLOWED[a.split(".")[0]]]
    assert not broken, f"imports against the layers: {broken}"


def test_the_sweep_layer_does_not_import_the_analysis():
    edges = graph()
    assert not [(a, b) for a in edges for b in edges[a] if a.startswith("harness.sweep") and b.startswith("analysis")]


def test_no_import_cycles():
    edges = graph()
    reach = {name: set(targets) for name, targets in edges.items()}
    for _ in range(len(reach)):                  # transitive closure (a few dozen modules)
        grown = {name: targets.union(*(reach[t] for t in targets)) for name, targets in reach.items()}
        if grown == reach:
            break
        reach = grown
    cycles = sorted({tuple(sorted((a, b))) for a, b in itertools.permutations(reach, 2)
                     if b in reach[a] and a in reach[b]})
    assert not cycles, f"modules that import each other (directly or through others): {cycles}"
