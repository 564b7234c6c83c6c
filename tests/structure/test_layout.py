"""The package layout the README describes: layers import only downwards, no import cycles
between packages (module-level and function-level imports alike), small modules and functions,
no model files tracked outside test fixtures."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "llmc"
# Bottom first: a package may import only packages of a lower layer (or its own).
LAYERS = [
    {"llmc.errors", "llmc.version"},
    {"llmc.model"},
    {"llmc.kernels"},  # llmc's compiled ONNX Runtime custom ops (ai.llmc) and where the library is
    {"llmc.spec"},  # what a build is made of, as data: options, Target, Precision (no mechanics)
    {"llmc.runtime"},  # sessions, Runner, load, padding execution, timing: what runs a model
    {"llmc.tasks"},  # encoder tasks read from a runner's outputs (embed, classify, extract, answer)
    {"llmc.passes"},
    {"llmc.targets"},  # ort, trt: pipeline, fusion families, Q/DQ rules, finishing step (engine)
    {"llmc.int8", "llmc.weight_only", "llmc.fp16", "llmc.export", "llmc.generation"},
    {"llmc.compiler"},
    {"llmc.compression"},  # prunes, distills, exports (llmc.export), builds to time (--target-speedup)
    {"llmc.serving"},  # runs and exports artifacts: above the compiler that writes them
    {"llmc.cli"},
    {"llmc.__main__"},
]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 100


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _imports(path: Path) -> set[str]:
    """Every llmc module named by an import anywhere in the file (functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] == "llmc"}


def package_edges() -> dict[tuple[str, str], str]:
    """(importing package, imported package) -> one module where it happens."""
    edges: dict[tuple[str, str], str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if module == "llmc":
            continue  # the package face re-exports lazily from the layers below
        for name in _imports(path):
            target = _package(name)
            if target != "llmc" and target != _package(module):
                edges.setdefault((_package(module), target), module)
    return edges


def _layer(package: str) -> int:
    for index, layer in enumerate(LAYERS):
        if package in layer:
            return index
    raise AssertionError(f"{package} is in no layer of tests/structure/test_layout.py: place it")


def test_packages_import_only_lower_layers():
    upward = [
        f"{module} ({a}) imports {b}"
        for (a, b), module in package_edges().items()
        if _layer(b) >= _layer(a)
    ]
    assert upward == []


def test_no_package_level_import_cycle():
    graph: dict[str, set[str]] = {}
    for a, b in package_edges():
        graph.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and not seen.add(nxt) and reaches(nxt, goal, seen)):
                return True
        return False

    assert [p for p in graph if reaches(p, p, set())] == []


def test_modules_and_functions_are_small():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{node.lineno} {node.name}(): {length} lines")
    assert too_long == []


def test_the_layer_check_sees_function_level_imports(tmp_path):
    # A guard on the check itself: an import inside a function body counts.
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from llmc.compiler.build import build\n    return build\n")
    assert "llmc.compiler.build" in _imports(path)


def test_no_model_files_tracked_outside_test_fixtures():
    try:
        files = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    suffixes = (".onnx", ".onnx.data", ".plan", ".engine", ".npz", ".gguf")
    tracked = [f for f in files if f.endswith(suffixes) and not f.startswith("tests/fixtures/")]
    assert tracked == []


CONTRACT = "llmc/model/decoder.py"
CONTRACT_LITERALS = ("past_key_values", "present.")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.add(id(first.value))
    return found


def contract_literals(text: str) -> list[str]:
    """The string constants of a module's code (f-string parts included, docstrings and comments
    not) that spell a name of the decoder I/O convention."""
    tree = ast.parse(text)
    docstrings = _docstrings(tree)
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
        and any(literal in node.value for literal in CONTRACT_LITERALS)
    ]


def test_one_decoder_contract():
    # The decoder I/O convention (past_key_values.{i}.key -> present.{i}.key) is spelled in one
    # module; everything else asks llmc.model.decoder.
    spelled = [
        f"{path.relative_to(ROOT)}: {literal!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if str(path.relative_to(ROOT)) != CONTRACT
        for literal in contract_literals(path.read_text())
    ]
    assert spelled == []


def test_the_contract_check_sees_code_not_docstrings():
    # A guard on the check itself: f-string parts and plain strings count; docstrings, comments do not.
    text = (
        '"""Reads past_key_values.0.key."""\n'
        "def f(i):\n"
        '    """-> present.0.key"""\n'
        "    # past_key_values\n"
        '    return f"present.{i}.key", "past_key_values"\n'
    )
    assert sorted(contract_literals(text)) == ["past_key_values", "present."]


def module_graph() -> dict[str, set[str]]:
    """llmc module -> the llmc modules it imports (module-level and function-level imports; a
    name imported from a package counts as its submodule when it is one)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        found: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(owner(alias.name) for alias in node.names if alias.name.startswith("llmc"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("llmc"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else owner(node.module))
        graph[module] = {m for m in found if m and m != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_level_cycle():
    assert cycles(module_graph()) == []


def test_the_cycle_check_finds_a_lazy_import_cycle():
    # A guard on the check itself: a function-level import closing a loop is a cycle.
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


# Where a target's or a precision's name may be compared: its own package (the declaration and
# the mechanics). Everywhere else code asks the object (request.target.qdq, precision.quantized).
NAME_HOMES = {
    "ort": ("llmc/targets/",), "trt": ("llmc/targets/",),
    "fp32": ("llmc/spec/precision.py",), "fp16": ("llmc/fp16/",),
    "int8": ("llmc/int8/", "llmc/weight_only/"), "int4": ("llmc/weight_only/",),
}


def compared_names(text: str) -> list[tuple[int, str]]:
    """(line, name) of every comparison (==, !=, in, not in) against a target or precision name."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Compare):
            continue
        for side in (node.left, *node.comparators):
            elements = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
            found += [(node.lineno, e.value) for e in elements
                      if isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value in NAME_HOMES]
    return found


def test_target_and_precision_names_are_compared_only_in_their_packages():
    stray = [
        f"{path.relative_to(ROOT)}:{line} compares {name!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, name in compared_names(path.read_text())
        if not str(path.relative_to(ROOT)).startswith(NAME_HOMES[name])
    ]
    assert stray == []


def test_the_name_check_sees_comparisons():
    text = 'if p == "int8" or t in ("ort", "x") or "fp16" != q:\n    pass\nd = {"trt": 1}\n'
    assert sorted(compared_names(text)) == [(1, "fp16"), (1, "int8"), (1, "ort")]


RUNTIME_ONLY_CALLS = ("InferenceSession", "create_execution_context", "deserialize_cuda_engine")


def test_sessions_and_execution_contexts_are_created_only_in_the_runtime():
    stray = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if str(path.relative_to(ROOT)).startswith("llmc/runtime/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in RUNTIME_ONLY_CALLS:
                    stray.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}()")
    assert stray == []
