"""The package's import graph: no circles, and no module reaches past what a package exports."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "steerft"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            return True
    return False


def imports_of(name: str) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every import that runs, at top level or inside a function."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                exported = base in MODULES and alias.name in _exports(base)
                found.append((submodule, None) if submodule in MODULES and not exported else (base, alias.name))
    found += [(_absolute(package, where), attribute) for attribute, where in _lazy_names(tree).items()]
    return [(module, name) for module, name in found if module == "steerft" or module.startswith("steerft.")]


def _lazy_names(tree: ast.Module) -> dict[str, str]:
    """A package's `_LAZY` map (name -> ".submodule", steerft.lazy): imports that run on first access."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _absolute(package: str, relative: str) -> str:
    return importlib.util.resolve_name(relative, package)


def _exports(module: str) -> list[str]:
    """A module's `__all__`, read from its source (no import needed)."""
    for node in ast.parse(MODULES[module].read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def graph() -> dict[str, set[str]]:
    return {name: {module for module, _ in imports_of(name) if module in MODULES and module != name}
            for name in MODULES}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def _is_package_init(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def test_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    assert circles(graph()) == []


def test_modules_import_only_what_other_packages_export():
    """`from steerft.x.y import z` from outside package steerft.x must name something steerft.x exports.

    Importing a whole public module (`from steerft.jobs import train`) is fine: the module is its API.
    """
    reaches = []
    for name in MODULES:
        here = name if _is_package_init(name) else name.rpartition(".")[0]
        for module, imported in imports_of(name):
            if module not in MODULES or _is_package_init(module):
                continue
            owner = module.rpartition(".")[0]
            if owner in ("steerft", here) or here.startswith(owner + "."):
                continue  # the top-level modules, and a package's own modules
            if imported is None and not module.rpartition(".")[2].startswith("_"):
                continue
            if imported is None or imported not in _exports(owner):
                reaches.append(f"{name} imports {module}.{imported or ''}")
    assert reaches == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)


# --- the CLI's light path: help and config errors before torch (issue 13)

HEAVY = ("torch", "transformers", "peft", "trl")

_CLI_SCRIPT = """
import contextlib, io, json, sys
from steerft import cli
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
    try:
        code = cli.main(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules], "stderr": err.getvalue()}))
""" % (HEAVY,)


def _run_python(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent, env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})


@pytest.mark.parametrize(("argv", "code"), [
    (["--help"], 0),
    (["study", "--help"], 0),
    (["train", "--help"], 0),
    (["extract", "--help"], 0),
    (["truth", "--help"], 0),
    (["export", "gguf", "--help"], 0),
    (["import", "gguf", "--help"], 0),
    (["push", "--help"], 0),
    (["study", "--config", "eval/studies/quick.yaml", "layers=[99x"], 2),  # not YAML
    (["study", "--config", "eval/studies/quick.yaml", "bogus=1"], 2),  # unknown key
    (["study", "--config", "no-such-config.yaml"], 2),  # missing file
    (["study", "seeds=[]"], 2),  # empty grid
    (["train", "seed=-1"], 2),
    (["train", "n=[1]"], 2),  # wrong type
    (["extract", "seed=-1"], 2),
    (["truth", "layers=[8,8]"], 2),
    # names, checked against the torch-free lists (steerft.choices, steerft.study.method_specs)
    (["study", "--config", "eval/studies/quick.yaml", "methods=[bogus]"], 2),
    (["study", "--config", "eval/studies/quick.yaml", "methods=[pca]", "n=[1]"], 2),  # below the method's min_n
    (["study", "--config", "eval/studies/quick.yaml", "positions=middle"], 2),
    (["study", "--config", "eval/studies/quick.yaml", "caa_reduce=max"], 2),
    (["study", "--config", "eval/studies/quick.yaml", "judge.kind=bogus"], 2),
    (["study", "--config", "eval/studies/quick.yaml", "select_caps.bogus=1"], 2),  # not a side effect
    (["extract", "estimators=[mean_diff,cca]"], 2),
    (["truth", "estimators=[cca]"], 2),
    (["train", "method=bogus"], 2),
])
def test_cli_help_and_config_errors_import_no_torch(argv, code):
    """`steerft ... --help` and a bad config answer before torch, transformers, PEFT or TRL load."""
    result = _run_python(_CLI_SCRIPT, *argv)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome["code"] == code, outcome["stderr"]
    assert code == 0 or outcome["stderr"].count("\n") == 1  # one line naming the problem
    assert outcome["heavy"] == []


def test_light_name_lists_match_the_registries_that_run():
    """The CLI checks names against torch-free lists; the heavy registries are built from the same names."""
    from steerft.choices import ESTIMATOR_NAMES, in_order
    from steerft.extract import ESTIMATORS
    from steerft.study.method_specs import METHOD_SPECS, MethodSpec
    from steerft.study.methods import METHODS

    assert tuple(ESTIMATORS) == ESTIMATOR_NAMES
    assert list(METHODS) == list(METHOD_SPECS)
    assert all(MethodSpec(**{f.name: getattr(METHODS[name], f.name) for f in dataclasses.fields(MethodSpec)})
               == spec for name, spec in METHOD_SPECS.items())
    with pytest.raises(RuntimeError, match=r"names without an entry \['b'\], entries without a name \['c'\]"):
        in_order(("a", "b"), {"a": 1, "c": 3}, "registry")


def test_import_steerft_is_light_and_its_names_load_on_use():
    script = (f"import sys, steerft; light = [m for m in {HEAVY!r} if m in sys.modules]; "
              "from steerft import SteerConfig; "
              "print(light, SteerConfig.__module__, 'SteerConfig' in dir(steerft))")
    result = _run_python(script)
    assert result.stdout.split() == ["[]", "steerft.tuner.config", "True"], result.stderr


@pytest.fixture(scope="module")
def steer_adapter(tiny_dir, tmp_path_factory) -> Path:
    """A steer adapter saved for `tiny_dir`'s model."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from steerft import SteerConfig

    folder = tmp_path_factory.mktemp("steer-adapter")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), SteerConfig(layers=[1], init="random"))
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("imports", [
    "import steerft; import peft",
    "import peft; import steerft",
    # transformers looks for peft (importlib.util.find_spec) before anything imports it
    "import steerft; from transformers.utils import is_peft_available; assert is_peft_available(); import peft",
])
def test_peft_loads_a_steer_adapter_after_import_steerft(imports, tiny_dir, steer_adapter):
    """`import steerft` registers the `steer` method however PEFT comes to be imported, before or after."""
    script = f"""{imports}
import sys
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[1]), sys.argv[2])
print(type(model.base_model).__name__, model.peft_config["default"].peft_type.name)
"""
    result = _run_python(script, str(tiny_dir), str(steer_adapter))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["SteerModel", "STEER"]
