"""The house's layout: no import circles, layer files that are the derivation,
rooms of a readable size.

* No import cycle among minivit/ and benchmarks/ (every import counts, also
  one inside a function: a cycle there still couples two files both ways).
* Each layer file (minivit/layers/*.py) holds no thread pool, no buffer
  reuse (``out=``) and no kernel code: its only tie to minivit/kernels/ is
  ``from minivit import kernels`` and lines ``if kernels.enabled():`` that
  name, in a comment, the kernel file with the same function, faster.
* The files of the kernels, parallelism, training, command line and
  benchmarks stay about 300 lines; the training loop itself about 250.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "minivit"
BENCHMARKS = ROOT / "benchmarks"
ROOM_LINES = 310
# Rooms allowed to be larger, and why (none at present).
LARGER_ROOMS: dict[str, str] = {}


def _module_name(path: Path) -> str:
    if path.is_relative_to(BENCHMARKS):
        return path.stem                                  # scripts import each other by name
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    files = list(PACKAGE.rglob("*.py")) + list(BENCHMARKS.glob("*.py"))
    return {_module_name(p): p for p in files}


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules that ``path`` imports anywhere in it."""
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:                                # relative: resolve from the package
                base = _module_name(path).split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # "from a import b": the submodule a.b if there is one, else a itself
            names = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module
                     for a in node.names]
        else:
            continue
        for name in names:
            # "import a.b.c" loads a, a.b, a.b.c; the edge that matters is to a.b.c
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    found.discard(_module_name(path))
    return found


def import_graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, known) for name, path in known.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_minivit_and_the_benchmarks():
    graph = import_graph()
    assert "minivit.layers.gelu" in graph and "bench_train" in graph
    assert "minivit.kernels" in graph["minivit.layers.gelu"]
    assert "common" in graph["torch_process"]            # lazy imports are seen
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_benchmark_script_is_imported_as_a_library():
    """bench_*.py and profile_step.py are scripts: no other file imports them
    (what they share lives in common.py, matmul_floor.py, torch_*.py)."""
    graph = import_graph()
    scripts = {p.stem for p in BENCHMARKS.glob("*.py")
               if p.stem.startswith("bench_") or p.stem == "profile_step"}
    for name, imported in graph.items():
        assert not (imported & scripts), f"{name} imports the script(s) {imported & scripts}"


LAYER_FILES = sorted((PACKAGE / "layers").glob("*.py"))
FORBIDDEN_IN_LAYERS = [
    (r"\bThreadPoolExecutor\b|\bconcurrent\b|\bthreading\b|\bmultiprocessing\b", "a thread pool"),
    (r"\bparallel_rows\b|minivit\.parallel|\bblas_threads\b", "threads"),
    (r"\bout=", "buffer reuse (out=)"),
    (r"\bpolynomial\b|_kernel\b", "kernel code"),
    (r"minivit\.ops\b", "the former ops module"),
]


@pytest.mark.parametrize("path", LAYER_FILES, ids=lambda p: p.name)
def test_layer_files_are_the_derivation(path):
    text = path.read_text(encoding="utf-8")
    for pattern, what in FORBIDDEN_IN_LAYERS:
        hits = [f"{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1)
                if re.search(pattern, line)]
        assert not hits, f"{path.name} holds {what}: {hits}"
    tree = ast.parse(text)
    kernel_imports = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minivit.kernels"):
            kernel_imports.append(ast.unparse(node))
        if isinstance(node, ast.Import) and any(a.name.startswith("minivit.kernels")
                                                for a in node.names):
            kernel_imports.append(ast.unparse(node))
        if isinstance(node, ast.ImportFrom) and node.module == "minivit" \
                and "kernels" in [a.name for a in node.names]:
            assert all(a.asname is None for a in node.names if a.name == "kernels")
    assert not kernel_imports, f"{path.name}: import the switch, not kernels: {kernel_imports}"
    if "kernels" not in text:
        return                                            # a layer with nothing faster
    if path.name == "__init__.py":
        return
    assert "The same function, faster" in " ".join((ast.get_docstring(tree) or "").split()), \
        f"{path.name}: its docstring should name the kernel file with the same function, faster"
    for i, line in enumerate(text.splitlines(), 1):
        if "kernels.enabled()" in line:
            match = re.search(r"# the same function, faster: (minivit/kernels/\w+\.py)", line)
            assert match, f"{path.name}:{i}: say which kernel file: {line.strip()}"
            assert (ROOT / match.group(1)).is_file(), f"{path.name}:{i}: no {match.group(1)}"


KERNEL_FILES = sorted(list((PACKAGE / "kernels").glob("*.py"))
                      + list((PACKAGE / "kernels" / "fused").glob("*.py")))


def test_every_kernel_names_the_reference_it_replaces():
    assert any(p.parent.name == "fused" for p in KERNEL_FILES)
    for path in KERNEL_FILES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), path.name
        if path.name in ("__init__.py", "switch.py", "cache.py", "simd.py"):
            continue      # a package's map; the switch; numba's cache; SIMD values, no math
        assert re.search(r"[Rr]eplaces", ast.get_docstring(tree)), path.name
        public = [n for n in tree.body if isinstance(n, ast.FunctionDef)
                  and not n.name.startswith("_")]
        for fn in public:
            doc = ast.get_docstring(fn) or ""
            assert doc, f"{path.name}: {fn.name} has no docstring"


ROOMS = sorted(KERNEL_FILES + list((PACKAGE / "parallel").glob("*.py"))
               + list((PACKAGE / "training").glob("*.py")) + list((PACKAGE / "cli").glob("*.py"))
               + LAYER_FILES + list(BENCHMARKS.glob("*.py"))
               + [PACKAGE / "module.py", PACKAGE / "memory.py", PACKAGE / "special.py"])


@pytest.mark.parametrize("path", ROOMS, ids=lambda p: str(p.relative_to(ROOT)))
def test_rooms_are_about_300_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    name = str(path.relative_to(ROOT))
    if name in LARGER_ROOMS:
        return
    assert lines <= ROOM_LINES, f"{name} has {lines} lines; split it by concern"


def test_the_training_loop_reads_in_one_sitting():
    loop = PACKAGE / "training" / "loop.py"
    text = loop.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 270, "minivit/training/loop.py: keep the loop short"
    for name in ("def fit", "def train_epoch", "def evaluate"):
        assert name in text
    # one process and N ranks run the same lines: no branch on the world's size
    branches = re.findall(r".*\bworld\.(?:distributed|size)\b.*", text)
    assert not branches, f"loop.py branches on the world: {branches}"
