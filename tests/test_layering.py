"""The arrows point one way: commands -> runner -> public API -> engine and backbones; the engine sees only
itself, the configs and the errors (read from the source,
lazy imports inside functions included)."""

import ast
import os

import pytest

SRC = os.path.join(os.path.dirname(__file__), "..", "src", "miga")


def miga_imports(path: str) -> set[str]:
    """Every ``miga.*`` module a source file imports, anywhere in the file."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("miga"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("miga"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def modules(package: str):
    folder = os.path.join(SRC, *package.split(".")[1:])
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            yield f"{package}.{name[:-3]}", os.path.join(folder, name)


UPWARD = ("miga.cli", "miga.commands", "miga.runner", "miga.runs", "miga.ablation", "miga.pipeline",
          "miga.diffusers_pipeline")


def offending(imports: set[str], allowed=None, forbidden=()) -> list[str]:
    bad = [m for m in imports if any(m == f or m.startswith(f + ".") for f in forbidden)]
    if allowed is not None:
        bad += [m for m in imports if not any(m == a or m.startswith(a + ".") for a in allowed)]
    return sorted(set(bad))


@pytest.mark.parametrize("name, path", list(modules("miga.engine")))
def test_the_engine_imports_only_itself(name, path):
    assert offending(miga_imports(path), allowed=("miga.engine", "miga.errors", "miga.config")) == []


@pytest.mark.parametrize("name, path", list(modules("miga.backbones")))
def test_backbones_do_not_import_the_api_runner_or_commands(name, path):
    assert offending(miga_imports(path), forbidden=UPWARD) == []


APPLICATION = ("miga.cli", "miga.commands", "miga.runner", "miga.ablation")
"""Above the public API: the commands, the runner and their data (the ablation rows)."""


@pytest.mark.parametrize("name", ["pipeline", "diffusers_pipeline", "config", "runs"])
def test_the_public_api_does_not_import_commands(name):
    assert offending(miga_imports(os.path.join(SRC, f"{name}.py")), forbidden=APPLICATION) == []


def test_the_layering_test_sees_imports():
    imports = miga_imports(os.path.join(SRC, "cli.py"))
    assert "miga.errors" in imports and offending({"miga.cli"}, forbidden=UPWARD) == ["miga.cli"]


# ---------------------------------------------------------------------------------------------------- the application

def all_modules() -> dict[str, str]:
    """``{module name: path}`` of every module of the package."""
    found = {}
    for folder, _, files in os.walk(SRC):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), SRC)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                found[".".join(["miga", *rel])] = os.path.join(folder, name)
    return found


def graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from miga.x import y``: ``miga.x.y`` if a module)."""
    edges = {}
    for name, path in modules.items():
        targets = set()
        for m in miga_imports(path):
            while m and m not in modules:
                m = m.rpartition(".")[0]
            if m and m != name:
                targets.add(m)
        edges[name] = targets
    return edges


def cycles(edges: dict[str, set[str]], among) -> list[list[str]]:
    """The import cycles (strongly connected groups of more than one module) among modules ``among``."""
    nodes = [n for n in edges if among(n)]
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if not among(w):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for n in nodes:
        if n not in index:
            visit(n)
    return out


def under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


MODULES = all_modules()
EDGES = graph(MODULES)
APP = ("miga.cli", "miga.commands", "miga.runner", "miga.common", "miga.ablation", "miga.suites")


def test_no_import_cycle_in_the_application():
    assert cycles(EDGES, lambda n: under(n, *APP)) == []


def test_the_cycle_finder_sees_a_cycle():
    edges = {"miga.cli": {"miga.commands.a"}, "miga.commands.a": {"miga.common"}, "miga.common": {"miga.cli"}}
    assert cycles(edges, lambda n: True) == [["miga.cli", "miga.commands.a", "miga.common"]]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if under(n, "miga.common")))
def test_the_shared_layer_imports_no_command_runner_or_cli(name):
    assert [m for m in EDGES[name] if under(m, "miga.cli", "miga.commands", "miga.runner", "miga.ablation",
                                             "miga.pipeline", "miga.runs")] == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if under(n, "miga.commands")))
def test_a_command_imports_no_other_command_nor_the_cli(name):
    assert [m for m in EDGES[name] if under(m, "miga.cli") or (under(m, "miga.commands") and m != name)] == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if under(n, "miga.runner", "miga.ablation", "miga.suites")))
def test_the_runner_imports_no_command_nor_the_cli(name):
    assert [m for m in EDGES[name] if under(m, "miga.cli", "miga.commands")] == []
    if under(name, "miga.ablation", "miga.suites"):
        assert [m for m in EDGES[name] if under(m, "miga.runner")] == []


def test_the_cli_dispatches_to_commands_only():
    assert [m for m in EDGES["miga.cli"] if not under(m, "miga.commands", "miga.common", "miga.errors",
                                                        "miga.app")] == []


def test_the_app_uses_only_public_names_below_it():
    """``miga.app`` sits beside the commands: it may use ``miga.commands.generate``'s public helpers, never the CLI
    or another module's private names (which may change without notice)."""
    bad = []
    for name, path in all_modules().items():
        if not name.startswith("miga.app"):
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("miga."):
                if node.module.startswith("miga.app"):
                    continue
                if node.module == "miga.cli":
                    bad.append(f"{name}: miga.cli")
                bad += [f"{name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert bad == []
    assert "miga.app.settings" in all_modules()
