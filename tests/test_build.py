"""BUILD stays in step with the tree: a target for every Python file, no target naming a missing
file, every dependency defined, and every import of a file covered by its target's deps. Bazel
cannot run here, so this checks the rules_python shape too: rules loaded with `load()`, `@pypi//`
labels normalised as the pip hub spells them, and MODULE.bazel declaring that hub from
requirements.lock."""

import ast
import configparser
import os
import re
import subprocess

import pytest

from tests import runs

ROOT = runs.ROOT
RULES = ("py_library", "py_binary", "pytest_test")
# The main that pytest.bzl gives every pytest_test.
PYTEST_MAIN = "tests/pytest_main.py"
# Top-level import name -> PyPI name, for the third-party packages the project uses.
THIRD_PARTY = {
    "jax": "jax", "haiku": "dm-haiku", "optax": "optax", "chex": "chex",
    "tensorflow_datasets": "tensorflow-datasets", "absl": "absl-py",
    "ml_collections": "ml-collections", "orbax": "orbax-checkpoint", "grain": "grain",
    "numpy": "numpy", "scipy": "scipy", "matplotlib": "matplotlib", "pytest": "pytest",
    "importlib_resources": "importlib_resources", "evosax": "evosax",
    "tensorboardX": "tensorboardX", "rapidfuzz": "rapidfuzz", "submitit": "submitit",
    "etils": "etils", "gcp_storage_emulator": "gcp-storage-emulator", "torch": "torch",
}
OWN_PACKAGES = ("learned_loss", "configs", "experiments", "tests", "benchmarks", "tools")


def normalise(name: str) -> str:
    """A PyPI name as rules_python's pip hub spells it: lower case, runs of -_. as _."""
    return re.sub(r"[-_.]+", "_", name).lower()


def parse_build(text: str) -> dict[str, dict]:
    """Targets by name: {'rule', 'srcs', 'deps', 'data', 'main'} from the Starlark calls; every
    rule used must have been loaded first with `load(FILE, RULE, ...)`."""
    targets, loaded = {}, {}
    for node in ast.parse(text).body:
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
            raise ValueError(f"BUILD line {node.lineno}: only load() and rule calls are allowed")
        call = node.value
        rule = getattr(call.func, "id", None)
        if rule == "load":
            source, *symbols = [ast.literal_eval(a) for a in call.args]
            loaded.update({symbol: source for symbol in symbols})
            continue
        if rule not in RULES:
            raise ValueError(f"BUILD line {node.lineno}: unknown rule {rule!r}")
        if rule not in loaded:
            raise ValueError(f"BUILD line {node.lineno}: {rule} is used but never loaded")
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        name = kwargs["name"]
        if name in targets:
            raise ValueError(f"BUILD: target {name!r} is defined twice")
        targets[name] = dict(rule=rule, srcs=kwargs.get("srcs", []), deps=kwargs.get("deps", []),
                             data=kwargs.get("data", []), main=kwargs.get("main"),
                             load=loaded[rule])
    return targets


@pytest.fixture(scope="module")
def targets():
    with open(os.path.join(ROOT, "BUILD"), encoding="utf-8") as f:
        return parse_build(f.read())


def _python_files() -> list[str]:
    """Tracked and untracked-but-not-ignored Python files of the project."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                          "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [f for f in out.split() if f.split("/")[0] in OWN_PACKAGES]
    return sorted(f for f in files if os.path.exists(os.path.join(ROOT, f)))


def _owner(targets) -> dict[str, str]:
    return {src: name for name, t in targets.items() for src in t["srcs"]}


def test_every_python_file_has_exactly_one_target(targets):
    owners = {}
    for name, target in targets.items():
        for src in target["srcs"]:
            assert src not in owners, f"{src} is in both {owners[src]} and {name}"
            owners[src] = name
    missing = [f for f in _python_files() if f not in owners]
    assert not missing, f"no BUILD target for {missing}"


def test_every_named_file_exists(targets):
    for name, target in targets.items():
        for path in target["srcs"] + [d for d in target["data"] if not d.startswith(":")]:
            assert os.path.exists(os.path.join(ROOT, path)), f"{name} names missing {path}"
        if target["main"]:
            assert target["main"] in target["srcs"], f"{name}: main is not one of its srcs"


def _is_script(path: str) -> bool:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return 'if __name__ == "__main__":' in f.read()


def test_entry_points_and_tests_use_the_right_rule(targets):
    for name, target in targets.items():
        for src in target["srcs"]:
            # A script of experiments/ or benchmarks/ is a binary; a module they share a library.
            if src.startswith(("experiments/", "benchmarks/")):
                expected = "py_binary" if _is_script(src) else "py_library"
                assert target["rule"] == expected, f"{src} should be a {expected}"
            if re.match(r"tests/test_\w+\.py$", src):
                assert target["rule"] == "pytest_test", f"{src} should be a pytest_test"


def _declared_requirements() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    text = parser["options"]["install_requires"] + parser["options.extras_require"]["test"]
    # `jax[tpu]>=0.10` declares jax (the extra's own pins come with jax's metadata).
    return {normalise(re.split(r"[\[<>=!~ ]", line.strip())[0])
            for line in text.splitlines() if line.strip()}


def test_dependencies_are_defined(targets):
    requirements = _declared_requirements()
    for name, target in targets.items():
        for dep in target["deps"] + [d for d in target["data"] if d.startswith(":")]:
            if dep.startswith(":"):
                assert dep[1:] in targets, f"{name} depends on undefined {dep}"
            else:
                match = re.fullmatch(r"@pypi//(.+)", dep)
                assert match, f"{name}: dependency {dep!r} is neither :target nor @pypi//name"
                assert match.group(1) == normalise(match.group(1)), \
                    f"{name}: {dep} is not normalised (@pypi//{normalise(match.group(1))})"
                assert match.group(1) in requirements, f"{dep} is not in setup.cfg"


def _module_file(module: str) -> str | None:
    path = module.replace(".", "/")
    for candidate in (f"{path}.py", f"{path}/__init__.py"):
        if os.path.exists(os.path.join(ROOT, candidate)):
            return candidate
    return None


def _imports(path: str) -> tuple[set[str], set[str]]:
    """(files of the project's own modules, third-party top-level names) imported by `path`."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    own, external = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            base = node.module
            modules = [f"{base}.{a.name}" if _module_file(f"{base}.{a.name}") else base
                       for a in node.names]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if top in OWN_PACKAGES:
                own.add(_module_file(module))
            elif top in THIRD_PARTY:
                external.add(top)
    return own, external


def _transitive(targets, name, seen=None) -> set[str]:
    seen = set() if seen is None else seen
    for dep in targets[name]["deps"]:
        if dep.startswith(":") and dep[1:] not in seen:
            seen.add(dep[1:])
            _transitive(targets, dep[1:], seen)
    return seen


def test_imports_are_covered_by_deps(targets):
    owners = _owner(targets)
    for name, target in targets.items():
        direct = {d[1:] for d in target["deps"] if d.startswith(":")}
        pypi = {d.split("//")[1] for d in target["deps"] if d.startswith("@pypi//")}
        for src in target["srcs"]:
            own, external = _imports(src)
            for module_file in own:
                assert module_file is not None, f"{src} imports a module that does not exist"
                owner = owners.get(module_file)
                if owner == name or module_file.endswith("__init__.py") and owner in \
                        _transitive(targets, name):
                    continue
                assert owner in direct, f"{name}: {src} imports {module_file} ({owner}) " \
                                        f"but does not list :{owner} in deps"
            for top in external:
                label = normalise(THIRD_PARTY[top])
                assert label in pypi, f"{name}: {src} imports {top} but does not list " \
                                      f"@pypi//{label}"


def test_parser_rejects_a_broken_build():
    load = 'load("@rules_python//python:defs.bzl", "py_library")\n'
    with pytest.raises(ValueError, match="defined twice"):
        parse_build(load + 'py_library(name="a", srcs=[])\npy_library(name="a", srcs=[])')
    with pytest.raises(ValueError, match="unknown rule"):
        parse_build('cc_library(name="a")')
    with pytest.raises(ValueError, match="never loaded"):
        parse_build('py_library(name="a", srcs=[])')
    loaded = parse_build(load + 'py_library(name="a", srcs=["x.py"])')
    assert loaded["a"]["load"] == "@rules_python//python:defs.bzl"


def test_rules_come_from_rules_python_and_the_pytest_macro(targets):
    with open(os.path.join(ROOT, "pytest.bzl"), encoding="utf-8") as f:
        macro = f.read()
    assert 'load("@rules_python//python:defs.bzl", "py_test")' in macro
    assert f'main = "{PYTEST_MAIN}"' in macro
    for name, target in targets.items():
        expected = "//:pytest.bzl" if target["rule"] == "pytest_test" else \
            "@rules_python//python:defs.bzl"
        assert target["load"] == expected, f"{name}: {target['rule']} loaded from {target['load']}"
    assert targets["pytest_main"]["srcs"] == [PYTEST_MAIN]


def test_module_declares_the_pip_hub_from_the_lock():
    with open(os.path.join(ROOT, "MODULE.bazel"), encoding="utf-8") as f:
        module = f.read()
    assert re.search(r'bazel_dep\(name = "rules_python", version = "[0-9.]+"\)', module)
    assert 'hub_name = "pypi"' in module and 'use_repo(pip, "pypi")' in module
    assert 'requirements_lock = "//:requirements.lock"' in module
    # Every declared requirement is pinned in the lock, which the hub reads.
    with open(os.path.join(ROOT, "requirements.lock"), encoding="utf-8") as f:
        pinned = {normalise(line.split("==")[0]) for line in f
                  if "==" in line and not line.startswith("#")}
    assert _declared_requirements() <= pinned
