"""The package's import structure: no cycles between its modules, nothing heavy at import."""

import ast
import subprocess
import sys
from pathlib import Path

import skretrieval

PACKAGE = Path(skretrieval.__file__).parent


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


def _imports(name: str, path: Path, modules) -> set[str]:
    """Every skretrieval module ``name`` imports, at module level or inside functions.

    Importing ``a.b.c`` also runs the package ``a.b`` (unless ``name`` is inside it), and
    a public name of the lazy top-level package counts as the module defining it.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base) if node.level else node.module
            if not module or not module.startswith("skretrieval"):
                continue
            for alias in node.names:
                if module == "skretrieval" and alias.name in skretrieval._WHERE:
                    targets.add("skretrieval" + skretrieval._WHERE[alias.name])
                elif f"{module}.{alias.name}" in modules:
                    targets.add(f"{module}.{alias.name}")
                else:
                    targets.add(module)
        elif isinstance(node, ast.Import):
            targets |= {a.name for a in node.names if a.name.startswith("skretrieval")}
    edges = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            ancestor = ".".join(parts[:i])
            if ancestor in modules and ancestor != name and not name.startswith(ancestor + "."):
                edges.add(ancestor)
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_modules_form_no_import_cycle():
    modules = _module_names()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["skretrieval._retriever"] >= {"skretrieval._neighbors", "skretrieval._encoder"}  # the walk works
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _loaded_after(code: str) -> set[str]:
    heavy = ("torch", "torchvision", "sklearn", "matplotlib", "onnxruntime", "dask", "faiss")
    script = f"import sys\n{code}\nprint(' '.join(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_import_skretrieval_is_light():
    assert _loaded_after("import skretrieval; skretrieval.__version__") == set()


def test_the_estimators_load_without_torchvision_or_matplotlib():
    loaded = _loaded_after(
        "from skretrieval import ImageEncoder, ImageRetriever, load\n"
        "import skretrieval.metrics, skretrieval.plotting, skretrieval.search"
    )
    assert {"torch", "sklearn"} <= loaded
    assert not loaded & {"torchvision", "matplotlib", "onnxruntime", "dask", "faiss"}
