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


UPWARD = ("miga.cli", "miga.runs", "miga.ablation", "miga.bench", "miga.pipeline", "miga.diffusers_pipeline")


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


@pytest.mark.parametrize("name", ["pipeline", "diffusers_pipeline", "config"])
def test_the_public_api_does_not_import_commands(name):
    assert offending(miga_imports(os.path.join(SRC, f"{name}.py")), forbidden=("miga.cli", "miga.ablation",
                                                                              "miga.bench")) == []


def test_the_layering_test_sees_imports():
    imports = miga_imports(os.path.join(SRC, "cli.py"))
    assert "miga.errors" in imports and offending({"miga.cli"}, forbidden=UPWARD) == ["miga.cli"]
