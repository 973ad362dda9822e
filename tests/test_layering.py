"""The import graph of eoq/ and analysis/, read from the source (AST, function-local imports
included): no cycle, and every import goes down the layers

    eoq.kernels, eoq.distributed  ->  eoq.quant  ->  eoq.engine  ->  eoq.nn  ->  eoq.models
    ->  eoq.training  ->  eoq (the public API), eoq.cli, eoq.__main__        analysis on top

(a module may import its own layer or any below; only the command line may import analysis;
analysis may import anything of eoq but the command line)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [("eoq.kernels", "eoq.distributed"), ("eoq.quant",), ("eoq.engine",), ("eoq.nn",), ("eoq.models",),
          ("eoq.training",), ("eoq", "eoq.cli", "eoq.__main__"), ("analysis",)]


def modules() -> dict[str, Path]:
    out = {}
    for pkg in ("eoq", "analysis"):
        for f in (ROOT / pkg).rglob("*.py"):
            rel = f.relative_to(ROOT).with_suffix("")
            out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = f
    return out


def imports(name: str, path: Path, known) -> set[str]:
    """The project modules ``name`` imports (``from pkg import sub`` counts as pkg.sub)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, f, mods) for m, f in mods.items()}


def layer(module: str) -> int:
    best = None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and (best is None or len(n) > best[1]):
                best = (i, len(n))
    return best[0]


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def against_the_layers(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in g.items():
        for dst in targets:
            if src.startswith("eoq") and dst.startswith("analysis") and src != "eoq.cli":
                bad.append(f"{src} -> {dst} (only eoq.cli may import analysis)")
            elif src.startswith("analysis") and dst == "eoq.cli":
                bad.append(f"{src} -> {dst} (analysis must not import the command line)")
            elif src.startswith("eoq") and dst.startswith("eoq") and layer(dst) > layer(src):
                bad.append(f"{src} -> {dst} (imports upward)")
    return sorted(bad)


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_imports_follow_the_layers():
    assert against_the_layers(graph()) == []


def test_the_checks_find_the_cycle_this_layout_removed():
    """The cycle the flat layout had (quantizers -> distributed -> layers -> intengine ->
    distributed, spec in it too) put back into the real graph is found by both checks."""
    g = graph()
    g["eoq.distributed"] = g["eoq.distributed"] | {"eoq.nn.layers"}
    found = cycles(g)
    assert any({"eoq.distributed", "eoq.nn.layers", "eoq.engine.intengine"} <= set(c) for c in found)
    assert "eoq.distributed -> eoq.nn.layers (imports upward)" in against_the_layers(g)


@pytest.mark.parametrize("module", ["eoq.quant", "eoq.engine", "eoq.nn", "eoq.training", "analysis.isometry",
                                    "analysis.cost", "analysis.qstats"])
def test_every_subpackage_says_what_it_holds(module):
    import importlib

    doc = importlib.import_module(module).__doc__ or ""
    assert len(doc.splitlines()) >= 3
