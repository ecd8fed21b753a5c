"""The layers of docs/architecture.md, read from the code's own imports: every import of a
package of this repository goes to a lower layer or stays in its own package, and nothing
imports ``tests``. Imports inside functions count as well."""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Bottom first; a package may import only packages of lower layers (and itself).
LAYERS = [
    {"dream_engine_core"},
    {"nodes", "comfy_host"},
    {"tools"},
    {"model_builders"},
    {"training"},
    {"miniature"},
    {"benchmarks"},
    {"scripts"},
]
LAYER = {pkg: n for n, layer in enumerate(LAYERS) for pkg in layer}
REPO_NAMES = set(LAYER) | {"tests"}


def python_files():
    for pkg in LAYER:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            yield from (os.path.join(folder, f) for f in files if f.endswith(".py"))


def imported_packages(path: str, root: str = ROOT) -> set[str]:
    """Top-level names of this repository that ``path`` imports (relative imports resolved)."""
    rel = os.path.relpath(path, root)
    package = rel.split(os.sep)[:-1]
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                names = [".".join(base + ([node.module] if node.module else [])) or "."]
            else:
                names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in REPO_NAMES}
    return found


def test_every_import_goes_down_the_layers():
    wrong = []
    for path in python_files():
        own = os.path.relpath(path, ROOT).split(os.sep)[0]
        for pkg in imported_packages(path):
            if pkg != own and (pkg == "tests" or LAYER[pkg] >= LAYER[own]):
                wrong.append(f"{os.path.relpath(path, ROOT)} imports {pkg}")
    assert not wrong, "imports against the layers of docs/architecture.md:\n" + "\n".join(sorted(wrong))


def test_the_reader_sees_lazy_and_relative_imports(tmp_path):
    """The check itself: an import inside a function and a relative import are both read."""
    folder = tmp_path / "training"
    folder.mkdir()
    f = folder / "x.py"
    f.write_text("def f():\n    from miniature import shapes_world\nfrom ..tests import conftest\n")
    assert imported_packages(str(f), root=str(tmp_path)) == {"miniature", "tests"}
