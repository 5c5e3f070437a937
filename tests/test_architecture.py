"""The layers of docs/architecture.md hold: permcodec's modules import one way (no module-level
cycle), and the format layer is a pure function of bytes (no torch, no run-time compiler)."""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "permcodec"


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(module: str, node: ast.AST) -> set[str]:
    """The permcodec modules an import statement runs (a name imported from a package that is
    itself a module counts as that module). The packages a module sits in are imported before it,
    so they are no edge (``from .. import _core`` names the compiled core, not the package)."""
    is_package = MODULES[module].name == "__init__.py"
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        names = [origin] + [f"{origin}.{a.name}" for a in node.names]
    found = set()
    for name in names:
        while name and name not in MODULES:  # import a.b.c runs a.b.c, or the deepest module of it
            name = name.rpartition(".")[0]
        if name and not (module + ".").startswith(name + "."):  # itself or a package it sits in
            found.add(name)
    return found


def imports(module: str) -> tuple[set[str], set[str]]:
    """(module-level, function-level) permcodec imports of one module. Imports under
    ``if TYPE_CHECKING:`` run at no time and are ignored."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    top, inner = set(), set()

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    walk(ast.Module(body=[sub], type_ignores=[]), in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (inner if in_function else top).update(_targets(module, child))
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    return top, inner - top


GRAPH = {m: imports(m) for m in MODULES}


#: Modules that take part in cycles only through imports inside functions (see
#: docs/architecture.md): the adapter and the readers call each other lazily.
SOFT_CYCLE_MEMBERS: set[str] = {
    "permcodec.api", "permcodec.gpu", "permcodec._gpu_triton", "permcodec._gpu_uniform",
    "permcodec.into", "permcodec.shards", "permcodec.stream",
}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_known_edges():
    top, _ = GRAPH["permcodec.format"]
    assert "permcodec.errors" in top
    assert "permcodec.codecs.uniform" in GRAPH["permcodec.codecs"][0]


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_level_import_cycle():
    found = cycles({m: top for m, (top, _) in GRAPH.items()})
    assert not found, f"module-level import cycles (layers must import one way): {found}"


def test_function_level_imports_are_few_and_known():
    """Imports inside functions are allowed (lazy torch-adapter helpers), but a function-level
    cycle is a softer layering smell: they are listed here so a new one is a conscious choice."""
    both = {m: top | inner for m, (top, inner) in GRAPH.items()}
    found = cycles(both)
    members = {m for component in found for m in component}
    assert members <= SOFT_CYCLE_MEMBERS, f"new function-level import cycle: {found}"


def test_format_imports_neither_torch_nor_numba():
    code = ("import sys, permcodec.format; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numba', 'triton')); "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"import permcodec.format imported {done.stdout.strip()} {done.stderr[-500:]}"

