"""Checks that every jax API this package uses exists in a given jax source tree, without
importing that jax (it may need a newer Python or a jaxlib this machine lacks).

  pip download --no-deps --only-binary=:all: --python-version 3.12 "jax>=0.11,<0.12" -d /tmp/jax
  unzip -q /tmp/jax/jax-*.whl -d /tmp/jax/src
  python -m tools.jax_api_audit /tmp/jax/src            # or .../site-packages of an installed jax

It parses (with `ast`) every Python file under learned_loss/, experiments/, configs/,
benchmarks/, tools/ and tests/ and collects
  - each dotted name reached from a jax import (`jax.random.key`, `jnp.where`,
    `P` from `from jax.sharding import PartitionSpec as P`, `multihost_utils.sync_global_devices`),
  - the keyword names and the number of positional arguments passed to those calls
    (`jax.jit(..., donate_argnums=...)`, also through `functools.partial(jax.jit, ...)`), and
  - the config options set (`jax.config.update("jax_...")`) or named as `JAX_*` environment
    variables (`JAX_COMPILATION_CACHE_DIR` is option `jax_compilation_cache_dir`), read as
    `jax.config.jax_*`.
Each is then resolved in the given tree by reading its modules' top-level bindings (`from x
import y as y`, assignments, defs, classes, submodules, class bodies and their bases), following
re-exports into `jax._src`; Python 3.12 syntax in that tree is read on 3.11 too. A keyword or
positional count is accepted when the resolved function or class (`__init__`/`__new__`/fields)
takes it. A name in a module's `_deprecations` table is deprecated (still there, warns) or
removed (raises AttributeError); options are those jax defines (`*_state(name=...)`).

Prints one line per API: `found`, `jaxlib` (re-exported from the compiled jaxlib, which a source
tree cannot show), `unchecked` (a call of something whose signature is not in Python source,
e.g. numpy's scalar types), `deprecated`, `removed` or `missing`. Exit status 1 if any is
missing, removed or deprecated. Not covered: attributes of values at run time (methods of
arrays, meshes, compiled functions), XLA flags (compiled into jaxlib: `XLA_FLAGS` names one
0.11 rejects, see README) and behaviour changes under an unchanged signature.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import re
import sys
from collections.abc import Iterator

# `bazel run //:jax_api_audit -- DIR` scans the workspace, not the runfiles tree.
ROOT = os.environ.get("BUILD_WORKSPACE_DIRECTORY") or os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("learned_loss", "experiments", "configs", "benchmarks", "tools", "tests")
JAX_ROOTS = ("jax", "jaxlib")
ENV_OPTION = re.compile(r"JAX_[A-Z0-9_]+")
# Environment variables jax reads directly rather than through a config option.
ENV_NOT_OPTIONS = {"JAX_PLATFORM_NAME_OVERRIDE"}


# ---- what the package uses ------------------------------------------------------------------

@dataclasses.dataclass
class Uses:
    names: dict[str, set[str]] = dataclasses.field(default_factory=dict)       # api -> files
    keywords: dict[tuple[str, str], set[str]] = dataclasses.field(default_factory=dict)
    positional: dict[tuple[str, int], set[str]] = dataclasses.field(default_factory=dict)
    options: dict[str, set[str]] = dataclasses.field(default_factory=dict)

    def add(self, table: dict, key, where: str) -> None:
        table.setdefault(key, set()).add(where)


def _python_files(root: str) -> Iterator[str]:
    for top in SCANNED:
        for folder, dirs, files in os.walk(os.path.join(root, top)):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            for name in sorted(files):
                if name.endswith(".py"):
                    yield os.path.join(folder, name)


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted jax name, from every import in the file (any scope)."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in JAX_ROOTS:
                    if a.asname:
                        out[a.asname] = a.name
                    else:
                        out[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module.split(".")[0] in JAX_ROOTS:
                for a in node.names:
                    out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in aliases:
        return ".".join([aliases[node.id], *reversed(parts)])
    return None


def collect(root: str = ROOT) -> Uses:
    uses = Uses()
    for path in _python_files(root):
        where = os.path.relpath(path, root)
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        aliases = _aliases(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                if node.module.split(".")[0] in JAX_ROOTS:
                    for a in node.names:
                        uses.add(uses.names, f"{node.module}.{a.name}", where)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in JAX_ROOTS:
                        uses.add(uses.names, a.name, where)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if ENV_OPTION.fullmatch(node.value) and node.value not in ENV_NOT_OPTIONS:
                    uses.add(uses.options, node.value.lower(), where)
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Attribute, ast.Name)) and not (
                    isinstance(parents.get(node), ast.Attribute)):
                name = _dotted(node, aliases)
                if name and re.fullmatch(r"jax\.config\.jax_\w+", name):
                    uses.add(uses.options, name.split(".")[-1], where)   # jax.config.jax_enable_x64
                elif name and name.startswith(("jax.", "jaxlib.")):
                    uses.add(uses.names, name, where)
            if not isinstance(node, ast.Call):
                continue
            func = _dotted(node.func, aliases)
            keywords = [k.arg for k in node.keywords if k.arg]
            args = node.args
            if func in ("functools.partial", None) and node.args and (
                    isinstance(node.func, ast.Name) and node.func.id == "partial"
                    or isinstance(node.func, ast.Attribute) and node.func.attr == "partial"):
                func, args = _dotted(node.args[0], aliases), node.args[1:]
            if func and func.startswith("jax."):
                for k in keywords:
                    uses.add(uses.keywords, (func, k), where)
                if args and not any(isinstance(a, ast.Starred) for a in args):
                    uses.add(uses.positional, (func, len(args)), where)
                if func == "jax.config.update" and node.args and isinstance(
                        node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    uses.add(uses.options, node.args[0].value, where)
    return uses


# ---- what the jax tree defines --------------------------------------------------------------

_TYPE_PARAMS = re.compile(r"^(\s*(?:async\s+)?(?:def|class)\s+\w+)\[", re.M)
_TYPE_ALIAS = re.compile(r"^(\s*)type\s+(\w+)(\[[^=]*\])?\s*=", re.M)


def _parse(text: str, path: str) -> ast.Module:
    """`ast.parse`, also of Python 3.12 syntax on an older Python: generic type parameters
    (`def f[T](...)`, `class C[T]:`) are dropped and `type X = ...` becomes `X = ...`."""
    try:
        return ast.parse(text, path)
    except SyntaxError:
        pass
    out, pos = [], 0
    for m in _TYPE_PARAMS.finditer(text):
        if m.start() < pos:
            continue
        out.append(text[pos:m.end(1)])
        depth, i = 0, m.end(1)
        while True:                                 # skip the balanced [...]
            depth += {"[": 1, "]": -1}.get(text[i], 0)
            i += 1
            if depth == 0:
                break
        pos = i
    text = "".join(out) + text[pos:]
    return ast.parse(_TYPE_ALIAS.sub(r"\1\2 =", text), path)


@dataclasses.dataclass(frozen=True)
class Found:
    kind: str                       # module | class | function | instance | value | jaxlib
    module: str = ""
    node: ast.AST | None = None     # ClassDef / FunctionDef
    status: str = "found"           # found | deprecated | removed
    bound: int = 0                  # leading parameters a call does not pass (self of a method)


class JaxTree:
    """Top-level bindings of the modules of an unimported jax source tree."""

    def __init__(self, top: str):
        top = os.path.abspath(top)
        if os.path.isfile(os.path.join(top, "__init__.py")) and os.path.basename(top) == "jax":
            top = os.path.dirname(top)
        if not os.path.isfile(os.path.join(top, "jax", "__init__.py")):
            raise SystemExit(f"{top}: no jax/__init__.py (give an unzipped wheel, site-packages)")
        self.top = top
        self._modules: dict[str, dict | None] = {}
        self._options: set[str] | None = None

    def version(self) -> str:
        try:
            with open(os.path.join(self.top, "jax", "version.py"), encoding="utf-8") as f:
                return re.search(r'^_version(?:: str)? = "([^"]+)"', f.read(), re.M).group(1)
        except (OSError, AttributeError):
            return "?"

    def _file(self, module: str) -> str | None:
        base = os.path.join(self.top, *module.split("."))
        for path in (os.path.join(base, "__init__.py"), base + ".py"):
            if os.path.isfile(path):
                return path
        return None

    def namespace(self, module: str) -> dict | None:
        """name -> ('def', node) | ('import', module, name) | ('module', module) |
        ('alias', expr) | ('deprecated'|'removed', None); None if the module is not a file."""
        if module in self._modules:
            return self._modules[module]
        path = self._file(module)
        if path is None:
            self._modules[module] = None
            return None
        with open(path, encoding="utf-8") as f:
            tree = _parse(f.read(), path)
        ns: dict = {}
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]

        def bind(body):
            for stmt in body:
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    ns[stmt.name] = ("def", stmt)
                elif isinstance(stmt, ast.Import):
                    for a in stmt.names:
                        ns[a.asname or a.name.split(".")[0]] = (
                            "module", a.name if a.asname else a.name.split(".")[0])
                elif isinstance(stmt, ast.ImportFrom):
                    src = stmt.module or ""
                    if stmt.level:
                        src = ".".join(
                            package.split(".")[:len(package.split(".")) - stmt.level + 1]
                            + ([src] if src else []))
                    for a in stmt.names:
                        if a.name != "*":
                            ns[a.asname or a.name] = ("import", src, a.name)
                elif isinstance(stmt, ast.Assign):
                    for t in stmt.targets:
                        if isinstance(t, ast.Name):
                            if isinstance(stmt.value, ast.Call) and t.id in ns and any(
                                    isinstance(a, ast.Name) and a.id == t.id
                                    for a in stmt.value.args):
                                continue            # `jit = api_boundary(jit, ...)`: keep the def
                            ns[t.id] = ("alias", stmt.value)
                            if t.id == "_deprecations" and isinstance(stmt.value, ast.Dict):
                                for k, v in zip(stmt.value.keys, stmt.value.values):
                                    if isinstance(k, ast.Constant):
                                        gone = (isinstance(v, ast.Tuple) and len(v.elts) > 1
                                                and isinstance(v.elts[1], ast.Constant)
                                                and v.elts[1].value is None)
                                        ns.setdefault("__deprecated__", {})[k.value] = (
                                            "removed" if gone else "deprecated")
                elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    ns[stmt.target.id] = ("alias", stmt.value) if stmt.value else ("value",)
                elif isinstance(stmt, ast.If):
                    bind(stmt.body)
                    bind(stmt.orelse)
                elif isinstance(stmt, ast.Try):
                    bind(stmt.body)
                    for h in stmt.handlers:
                        bind(h.body)
                    bind(stmt.orelse)
                    bind(stmt.finalbody)
                elif isinstance(stmt, ast.With):
                    bind(stmt.body)

        bind(tree.body)
        self._modules[module] = ns
        return ns

    def _member(self, module: str, name: str, depth: int = 0) -> Found | None:
        if module.split(".")[0] == "jaxlib" and self._file(module) is None:
            return Found("jaxlib", module)
        ns = self.namespace(module)
        if ns is not None and name in ("__file__", "__path__", "__name__", "__spec__", "__doc__"):
            return Found("value", module)
        deprecated = (ns or {}).get("__deprecated__", {}).get(name)
        if deprecated:
            return Found("value", module, status=deprecated)
        entry = (ns or {}).get(name)
        if entry is None or depth > 40:
            if self._file(f"{module}.{name}"):
                return Found("module", f"{module}.{name}")
            return None
        if entry[0] == "def":
            kind = "class" if isinstance(entry[1], ast.ClassDef) else "function"
            return Found(kind, module, entry[1])
        if entry[0] == "module":
            return Found("module", entry[1])
        if entry[0] == "import":
            if entry[1].split(".")[0] not in JAX_ROOTS:
                return Found("value", entry[1])     # re-exported from numpy etc.
            if self._file(f"{entry[1]}.{entry[2]}"):
                return Found("module", f"{entry[1]}.{entry[2]}")
            return self._member(entry[1], entry[2], depth + 1)
        if entry[0] == "alias":
            return self._expr(module, entry[1], depth + 1)
        return Found("value", module)

    def _expr(self, module: str, expr: ast.AST, depth: int) -> Found:
        """What an assigned expression names: an alias, or an instance of a class."""
        if isinstance(expr, (ast.Name, ast.Attribute)):
            parts = []
            while isinstance(expr, ast.Attribute):
                parts.append(expr.attr)
                expr = expr.value
            if isinstance(expr, ast.Name):
                found = self._member(module, expr.id, depth)
                for attr in reversed(parts):
                    if found is None or found.kind == "jaxlib":
                        break
                    found = self.attribute(found, attr, depth)
                if found is not None:
                    return found
        if isinstance(expr, ast.Call) and isinstance(expr.func, (ast.Name, ast.Attribute)):
            cls = self._expr(module, expr.func, depth)
            if cls.kind == "class":
                return Found("instance", cls.module, cls.node)
            if cls.kind == "jaxlib":
                return cls
        return Found("value", module)

    def attribute(self, found: Found, name: str, depth: int = 0) -> Found | None:
        if found.kind == "module":
            return self._member(found.module, name, depth)
        if found.kind in ("class", "instance"):
            return self._class_member(found, name, depth)
        if found.kind == "jaxlib":
            return found
        return Found("value", found.module)        # an attribute of a value: not checked

    def _class_member(self, cls: Found, name: str, depth: int) -> Found | None:
        for stmt in cls.node.body:
            targets = []
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                targets = [stmt.name]
            elif isinstance(stmt, ast.Assign):
                targets = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                targets = [stmt.target.id]
            if name in targets:
                if isinstance(stmt, ast.ClassDef):
                    return Found("class", cls.module, stmt)
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    static = any(isinstance(d, ast.Name) and d.id == "staticmethod"
                                 for d in stmt.decorator_list)
                    return Found("function", cls.module, stmt, bound=0 if static else 1)
                return Found("value", cls.module)
        if any(isinstance(s, ast.FunctionDef) and s.name == "__getattr__"
               for s in ast.walk(cls.node)):
            return Found("value", cls.module)       # computed attributes (`jax.config.jax_*`)
        for base in cls.node.bases:
            found = self._expr(cls.module, base, depth + 1)
            if found.kind == "jaxlib":
                return found
            if found.kind == "class" and found.node is not cls.node:
                member = self._class_member(found, name, depth + 1)
                if member is not None:
                    return member
        return None

    def resolve(self, dotted: str) -> Found | None:
        parts = dotted.split(".")
        found = Found("module", parts[0]) if self._file(parts[0]) else None
        if found is None:
            return Found("jaxlib", parts[0]) if parts[0] == "jaxlib" else None
        for part in parts[1:]:
            status = found.status
            found = self.attribute(found, part)
            if found is None:
                return None
            if status != "found" and found.status == "found":
                found = dataclasses.replace(found, status=status)
        return found

    def _signature(self, found: Found) -> tuple[ast.arguments, int] | list[str] | None:
        """(arguments, leading ones bound already: self/cls) of what a call of `found` runs,
        the field names of a class without __init__, or None where that cannot be read."""
        node = found.node
        if found.kind == "class":
            init = [s for s in node.body if isinstance(s, ast.FunctionDef)
                    and s.name in ("__init__", "__new__")]
            if init:
                return init[-1].args, 1
            fields = [s.target.id for s in node.body if isinstance(s, ast.AnnAssign)
                      and isinstance(s.target, ast.Name)]
            return fields or None
        if found.kind != "function":
            return None
        return node.args, found.bound

    def accepts(self, found: Found, keyword: str) -> bool | None:
        """Whether a call of `found` takes `keyword`; None where that cannot be read."""
        sig = self._signature(found)
        if sig is None or isinstance(sig, list):
            return None if sig is None else keyword in sig
        args, _ = sig
        if args.kwarg is not None:
            return True
        return keyword in {a.arg for a in args.args + args.kwonlyargs}

    def accepts_positional(self, found: Found, count: int) -> bool | None:
        """Whether a call of `found` takes `count` positional arguments."""
        sig = self._signature(found)
        if sig is None or isinstance(sig, list):
            return None if sig is None else count <= len(sig)
        args, bound = sig
        return args.vararg is not None or count <= len(args.posonlyargs + args.args) - bound

    def options(self) -> set[str]:
        """Names of the config options jax defines (`*_state(name=...)`, `define_*(...)`)."""
        if self._options is None:
            self._options = set()
            for folder, _, files in os.walk(os.path.join(self.top, "jax")):
                for name in files:
                    if not name.endswith(".py"):
                        continue
                    with open(os.path.join(folder, name), encoding="utf-8") as f:
                        text = f.read()
                    if "jax_" not in text:
                        continue
                    for node in ast.walk(_parse(text, name)):
                        if not isinstance(node, ast.Call):
                            continue
                        func = node.func.attr if isinstance(node.func, ast.Attribute) else (
                            node.func.id if isinstance(node.func, ast.Name) else "")
                        if not (func.endswith(("_state", "_flag")) or func.startswith(
                                ("define", "DEFINE"))):
                            continue
                        for arg in node.args[:1] + [k.value for k in node.keywords
                                                    if k.arg == "name"]:
                            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                                self._options.add(arg.value)
        return self._options


# ---- the report -----------------------------------------------------------------------------

def audit(tree: JaxTree, uses: Uses) -> list[tuple[str, str, str]]:
    """(status, what, where) rows, sorted by what."""
    rows = []
    for name, where in uses.names.items():
        found = tree.resolve(name)
        status = "missing" if found is None else (
            found.status if found.status != "found" else
            "jaxlib" if found.kind == "jaxlib" else "found")
        rows.append((status, name, ", ".join(sorted(where))))
    for (func, keyword), where in uses.keywords.items():
        found = tree.resolve(func)
        if found is None:
            continue                                    # reported with the name
        ok = tree.accepts(found, keyword)
        status = "found" if ok else ("missing" if ok is False else "unchecked")
        rows.append((status, f"{func}({keyword}=)", ", ".join(sorted(where))))
    for (func, count), where in uses.positional.items():
        found = tree.resolve(func)
        if found is None:
            continue
        ok = tree.accepts_positional(found, count)
        status = "found" if ok else ("missing" if ok is False else "unchecked")
        rows.append((status, f"{func}({count} positional)", ", ".join(sorted(where))))
    for option, where in uses.options.items():
        status = "found" if option in tree.options() else "missing"
        rows.append((status, f"config option {option}", ", ".join(sorted(where))))
    return sorted(rows, key=lambda r: r[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jax_tree", help="folder holding jax/ (an unzipped wheel, site-packages)")
    parser.add_argument("--root", default=ROOT, help="the checkout to scan (default: this one)")
    parser.add_argument("--where", action="store_true", help="also print the files using each")
    args = parser.parse_args(argv)
    tree = JaxTree(args.jax_tree)
    rows = audit(tree, collect(args.root))
    for status, what, where in rows:
        print(f"{status:10s} {what}" + (f"    [{where}]" if args.where else ""))
    bad = [r for r in rows if r[0] in ("missing", "removed", "deprecated")]
    counts = {s: sum(r[0] == s for r in rows) for s in sorted({r[0] for r in rows})}
    print(f"jax {tree.version()} at {tree.top}: {len(rows)} APIs checked, "
          + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
