"""fastlstm's modules import one another one way only.

The graph is read from the source (every ``import`` and ``from ... import`` of a fastlstm
module, those inside functions included: a deferred import is still a dependency), so
the test needs no build. It must hold no cycle, and the layers must only look down:

    kernels, runtime, functional core  <-  nn  <-  models  <-  training  <-  tasks  <-  cli

with ``data``, ``corpus`` and ``optim`` beside the stack: they import only the layers
below nn, and anything from nn upwards may import them. ``python tests/test_import_graph.py``
prints the graph.
"""
import ast
import fnmatch
import os
import re
import sys

import fastlstm

PACKAGE = "fastlstm"
# The package the tests import: the source tree, or an installed wheel (whose .pyx
# sources may be absent; their Python-level imports are then not read).
ROOT = os.path.dirname(os.path.abspath(fastlstm.__file__))

# Layers from nn upwards, lowest first; a module matches one pattern of its layer.
# Modules in none of them are the low layers (kernels, runtime, functional core).
LAYERS = [
    ("nn", ["fastlstm.nn", "fastlstm.nn.*", "fastlstm.gradcheck"]),
    ("models", ["fastlstm.models", "fastlstm.checkpoint", "fastlstm._registry"]),
    ("training", ["fastlstm.training", "fastlstm.distributed"]),
    ("tasks", ["fastlstm.tasks", "fastlstm.demo"]),
    ("cli", ["fastlstm.cli", "fastlstm.__main__"]),
]
BESIDE = ["fastlstm.data", "fastlstm.data.*", "fastlstm.corpus", "fastlstm.optim"]

# Python-level imports of a Cython file (its cimports are compile-time only).
_PYX_IMPORT = re.compile(r"^[ \t]*from[ \t]+(\.+[\w.]*|fastlstm[\w.]*)[ \t]+import[ \t]+"
                         r"(\([^)]*\)|[^\n]+)|^[ \t]*import[ \t]+(fastlstm[\w.]*)", re.M)


def _modules():
    """{module name: (path, is_package)} of every .py and .pyx file of the package."""
    found = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__pycache__"))]
        rel = os.path.relpath(folder, ROOT)
        parts = [PACKAGE] + ([] if rel == "." else rel.split(os.sep))
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext not in (".py", ".pyx"):
                continue
            if stem == "__init__":
                found[".".join(parts)] = (os.path.join(folder, name), True)
            else:
                found[".".join(parts + [stem])] = (os.path.join(folder, name), False)
    return found


def _imports(path):
    """(level, module or "", [names]) of each import in a file."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    if path.endswith(".pyx"):
        for m in _PYX_IMPORT.finditer(source):
            if m.group(3):
                yield 0, m.group(3), []
                continue
            target = m.group(1)
            level = len(target) - len(target.lstrip("."))
            names = [n.split()[0] for n in m.group(2).strip("()").replace("\n", " ")
                     .split(",") if n.strip()]
            yield level, target[level:], names
        return
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield 0, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", [a.name for a in node.names]


def import_graph():
    """{module: set of the fastlstm modules it imports}.

    Imports of the package itself (``from . import __version__``) are left out: any
    import of a submodule runs the package's ``__init__`` first, which sits above every
    layer as the public facade."""
    modules = _modules()
    graph = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        edges = set()
        for level, module, names in _imports(path):
            if level:
                base = package
                for _ in range(level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{module}" if module else base
            elif module == PACKAGE or module.startswith(PACKAGE + "."):
                base = module
            else:
                continue
            for target in [f"{base}.{n}" for n in names] or [base]:
                if target not in modules:
                    target = base
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                if target in modules and target not in (PACKAGE, name):
                    edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan's algorithm),
    each as a sorted list."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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


def layer(module):
    """0 for the low layers, 1 + the index in LAYERS above them, None beside the stack,
    and None for the package itself (the facade over all of them)."""
    if module == PACKAGE or any(fnmatch.fnmatchcase(module, p) for p in BESIDE):
        return None
    for rank, (_, patterns) in enumerate(LAYERS, 1):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return rank
    return 0


def layer_violations(graph):
    """"a imports b" lines for every import that looks up the stack, or between the
    low layers and the modules beside the stack."""
    bad = []
    for a in sorted(graph):
        if a == PACKAGE:
            continue
        ra, beside_a = layer(a), any(fnmatch.fnmatchcase(a, p) for p in BESIDE)
        for b in sorted(graph[a]):
            rb, beside_b = layer(b), any(fnmatch.fnmatchcase(b, p) for p in BESIDE)
            if beside_a and beside_b:
                continue
            if beside_a:
                ok = rb == 0
            elif beside_b:
                ok = ra >= 1
            else:
                ok = rb <= ra
            if not ok:
                bad.append(f"{a} ({_layer_name(a)}) imports {b} ({_layer_name(b)})")
    return bad


def _layer_name(module):
    if any(fnmatch.fnmatchcase(module, p) for p in BESIDE):
        return "beside"
    rank = layer(module)
    return "kernels/runtime/core" if rank == 0 else LAYERS[rank - 1][0]


def test_the_graph_is_read():
    graph = import_graph()
    assert "fastlstm.checkpoint" in graph["fastlstm.training"]
    assert "fastlstm.nn.module" in graph["fastlstm.models"]
    assert "fastlstm.cli" in graph["fastlstm.__main__"]
    assert "fastlstm.nn.recurrent" in graph["fastlstm.nn"]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_only_look_down():
    assert layer_violations(import_graph()) == []


def test_layer_violations_are_found():
    graph = {"fastlstm.nn.layers": {"fastlstm.models"},
             "fastlstm.models": {"fastlstm.training", "fastlstm.nn.layers"},
             "fastlstm.training": {"fastlstm.cli", "fastlstm.data"},
             "fastlstm.data": {"fastlstm.nn.functional"},
             "fastlstm.lstm": {"fastlstm.optim"}}
    assert layer_violations(graph) == [
        "fastlstm.data (beside) imports fastlstm.nn.functional (nn)",
        "fastlstm.lstm (kernels/runtime/core) imports fastlstm.optim (beside)",
        "fastlstm.models (models) imports fastlstm.training (training)",
        "fastlstm.nn.layers (nn) imports fastlstm.models (models)",
        "fastlstm.training (training) imports fastlstm.cli (cli)",
    ]


if __name__ == "__main__":
    graph = import_graph()
    for module in sorted(graph, key=lambda m: (layer(m) if layer(m) is not None else -1, m)):
        print(f"{module:28} [{_layer_name(module) if module != PACKAGE else 'package'}] "
              f"<- {', '.join(sorted(graph[module])) or '-'}")
    print("cycles:", cycles(graph) or "none")
    print("layer violations:", layer_violations(graph) or "none")
    sys.exit(1 if cycles(graph) or layer_violations(graph) else 0)
