"""The layering BUILD declares holds: every import of effkeras, apps and tools (read with ast,
nothing imported) stays inside its target or goes to a target its `deps` reach, and no modules
import each other in a cycle. Imports inside functions count as much as those at the top."""

import ast
import os
import subprocess
import sys

from conftest import REPO

CHECKED = ("effkeras", "apps", "tools")  # tests may import anything


def build_targets():
    """{target name: {"srcs": [...], "deps": [...]}} of every rule in BUILD (Starlark is Python
    syntax: its calls are read with ast, not run)."""
    with open(os.path.join(REPO, "BUILD")) as f:
        tree = ast.parse(f.read())
    targets = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("py_library", "py_binary", "py_test")
        ):
            fields = {
                k.arg: ast.literal_eval(k.value)
                for k in node.keywords
                if k.arg in ("name", "srcs", "deps")
            }
            targets[fields["name"]] = {
                "srcs": fields.get("srcs", []),
                "deps": [d.lstrip(":") for d in fields.get("deps", [])],
            }
    return targets


def module_name(path):
    parts = path[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path, modules):
    """The project modules `path` imports: `from a.b import c` is a.b.c where that is a module,
    else a.b; relative imports resolved; third-party imports dropped."""
    name = module_name(path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    with open(os.path.join(REPO, path)) as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
            candidates = [c for c in candidates[:-1] if c in modules] or [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                found.add(candidate)
    return found


def import_graph():
    targets = build_targets()
    owner = {
        src: name
        for name, target in targets.items()
        for src in target["srcs"]
        if src.split("/")[0] in CHECKED
    }
    modules = {module_name(path): path for path in owner}
    graph = {name: imported_modules(path, modules) for name, path in modules.items()}
    return targets, owner, modules, graph


def reachable(targets, name):
    """`name` and every target its deps reach."""
    found, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo += targets[current]["deps"]
    return found


def test_every_import_is_allowed_by_build_deps():
    targets, owner, modules, graph = import_graph()
    assert "effkeras.deploy" in modules and "effkeras.layers" in modules  # BUILD was read
    wrong = []
    for name, imports in sorted(graph.items()):
        target = owner[modules[name]]
        allowed = reachable(targets, target)
        for imported in sorted(imports):
            if owner[modules[imported]] not in allowed:
                wrong.append(f"{name} ({target}) imports {imported} ({owner[modules[imported]]})")
    assert wrong == [], "imports BUILD's deps do not allow:\n" + "\n".join(wrong)


def test_deps_only_point_down():
    """BUILD's deps form no cycle themselves (else any import would pass)."""
    targets = build_targets()
    state = {}

    def visit(name, path):
        assert state.get(name) != "open", f"deps cycle: {' -> '.join(path + [name])}"
        if state.get(name) is None:
            state[name] = "open"
            for dep in targets[name]["deps"]:
                assert dep in targets, f"{name} depends on unknown target {dep}"
                visit(dep, path + [name])
            state[name] = "done"

    for name in targets:
        visit(name, [])


def test_no_import_cycle_between_modules():
    *_, graph = import_graph()
    state, cycles = {}, []

    def visit(name, path):
        state[name] = "open"
        for imported in sorted(graph[name]):
            if state.get(imported) == "open":
                cycles.append(" -> ".join(path[path.index(imported) :] + [imported]))
            elif imported not in state:
                visit(imported, path + [imported])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_import_effkeras_loads_no_deploy_training_or_interop():
    """`import effkeras` registers layers and models only: no converter, trainer or importer."""
    code = (
        "import sys, effkeras; print(sorted({m.split('.')[1] for m in sys.modules "
        "if m.startswith('effkeras.')}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = set(ast.literal_eval(result.stdout.strip().splitlines()[-1]))
    assert "layers" in loaded and "models" in loaded
    assert not loaded & {"deploy", "training", "interop", "benchmark", "evaluation", "data"}


def test_no_module_is_longer_than_600_lines():
    _, owner, _, _ = import_graph()
    long = {}
    for path in owner:
        if path.startswith("effkeras/"):
            with open(os.path.join(REPO, path)) as f:
                lines = sum(1 for _ in f)
            if lines > 600:
                long[path] = lines
    assert long == {}, "split these modules"
