"""The package's layout rules, read from its source: no import cycles in vip/ (imports inside functions
count: they hide a cycle, they do not remove it), no Slurm executor outside vip/orchestrate/, and no product
module importing the benchmarks (vip/bench/)."""
import ast
import os
import subprocess

from helpers.paths import ROOT

VIP = ROOT / "vip"


def module_name(path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path) -> set[str]:
    """The vip modules `path` imports, anywhere in the file (a `from package import name` counts as the
    submodule when `name` is one)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in VIP.rglob("*.py")}
    return {m: {i for i in imports_of(p) if i in modules and i != m and not m.startswith(i + ".")}
            for m, p in modules.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
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


def test_the_cycle_finder_finds_a_cycle():  # so that an empty list below means something
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    g = graph()
    assert "vip.steps.loo" in g["vip.orchestrate.driver"]  # the walk sees real imports


def test_vip_has_no_import_cycles():
    assert cycles(graph()) == []


def test_nothing_outside_orchestrate_imports_submitit_or_the_slurm_executor():
    offenders = sorted(m for m, deps in graph().items() if not m.startswith("vip.orchestrate")
                       and deps & {"vip.orchestrate.slurm"})
    offenders += sorted(module_name(p) for p in VIP.rglob("*.py") if "orchestrate" not in p.parts
                        and any(i.split(".")[0] == "submitit" for i in imports_of(p)))
    assert offenders == []
    # and at run time: the steps and the store load without submitit
    code = "import sys, vip.steps.loo, vip.steps.select, vip.store, vip.config; print('submitit' in sys.modules)"
    r = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.stdout.strip() == "False", r.stderr


def test_no_product_module_imports_the_benchmarks():
    g = graph()
    assert any(d.startswith("vip.steps.loo") for d in g["vip.bench.gpu"])  # the benchmarks do import the product
    offenders = sorted(m for m, deps in g.items() if not m.startswith("vip.bench")
                       and any(d == "vip.bench" or d.startswith("vip.bench.") for d in deps))
    assert offenders == []

