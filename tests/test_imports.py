"""The import rule of common.py's docstring, read from the source with ast: files in layers, each importing
only from the layers before it (see LAYERS), so nothing imports train, the core never imports report.py, and
there is no cycle. ast sees every import statement, also one hidden inside a function."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {p.stem for p in ROOT.glob("*.py")}


def imports(path: Path) -> set[str]:
    """Our modules that `path` imports anywhere in it (top level or inside a function)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & OURS - {path.stem}


def graph() -> dict[str, set[str]]:
    return {p.stem: imports(p) for p in ROOT.glob("*.py")}


LAYERS = (("common",), ("hub", "stats"), ("tokenizer", "data"), ("model", "own_data"), ("adapter",),
          ("memory", "eval", "runs", "report"), ("train",))
CORE = ("model", "adapter", "data", "train", "eval", "common")


def test_the_import_rule():
    g = graph()
    layer = {m: i for i, names in enumerate(LAYERS) for m in names}
    assert g.keys() == layer.keys(), "a new file: give it its layer here and in common.py's docstring"
    for m, deps in g.items():
        for dep in deps:
            assert layer[dep] < layer[m], f"{m} imports {dep}: the rule is {' | '.join(map(', '.join, LAYERS))}"
    assert "eval" in g["train"] and not [m for m, deps in g.items() if "train" in deps]
    assert not [m for m in CORE if "report" in g[m]], "the core never imports report.py"


def test_no_import_cycle():
    g = graph()
    done, path = set(), []

    def visit(m):
        assert m not in path, f"import cycle: {' -> '.join([*path[path.index(m):], m])}"
        if m in done:
            return
        path.append(m)
        for dep in sorted(g[m]):
            visit(dep)
        path.pop()
        done.add(m)

    for m in sorted(g):
        visit(m)
