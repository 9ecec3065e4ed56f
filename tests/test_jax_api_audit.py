"""tools/jax_api_audit.py: the package's jax APIs all resolve in the jax it runs with, and the
resolver tells found, deprecated, removed and missing names, keywords and options apart in a
small jax tree written here (in Python 3.12 syntax, which the resolver reads on 3.11 too)."""

import os
import textwrap

import jax

from tests import runs
from tools import jax_api_audit

INSTALLED = os.path.dirname(os.path.dirname(os.path.abspath(jax.__file__)))


def test_the_package_uses_only_what_the_installed_jax_has(capsys):
    assert jax_api_audit.main([INSTALLED, "--root", runs.ROOT]) == 0
    out = capsys.readouterr().out
    for line in ("found      jax.jit(donate_argnums=)", "found      jax.vmap(spmd_axis_name=)",
                 "found      jax.make_mesh(axis_types=)", "found      jax.sharding.AxisType.Auto",
                 "found      config option jax_cpu_collectives_implementation",
                 "found      jax.experimental.multihost_utils.process_allgather"):
        assert line in out
    assert f"jax {jax.__version__} at {INSTALLED}" in out


def _write(root, files):
    for path, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        with open(os.path.join(root, path), "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))


def test_missing_renamed_and_deprecated_uses_are_reported(tmp_path, capsys):
    tree, code = str(tmp_path / "site"), str(tmp_path / "checkout")
    _write(tree, {
        "jax/__init__.py": """
            from jax._src.api import jit as jit, Mesh as Mesh
            from jax._src import config as _config
            config = _config.Config()
            _deprecations = {"old": ("use new", object), "gone": ("removed", None)}
            """,
        "jax/version.py": '_version = "9.9.9"\n',
        "jax/_src/__init__.py": "",
        "jax/_src/api.py": """
            def jit[F](fun: F, /, *, static_argnums=None) -> F: ...
            jit = _wrap(jit)
            class Mesh[T]:
                def __new__(cls, devices, axis_names): ...
            type Spec = tuple
            """,
        "jax/_src/config.py": """
            class Config:
                def update(self, name, value): ...
            enable_x64 = bool_state(name="jax_enable_x64", default=False)
            """,
    })
    _write(code, {"learned_loss/m.py": """
        import functools
        import jax
        from jax import Mesh as M
        step = functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
        jax.old, jax.gone, jax.nowhere, M(1, 2, axis_types=3), M(1, 2, 3)
        jax.config.update("jax_enable_x64", True)
        jax.config.update("jax_renamed_option", True)
        print(jax.config.jax_enable_x64)
        """})
    assert jax_api_audit.main([tree, "--root", code]) == 1
    rows = dict(reversed(line.split(None, 1)) for line in capsys.readouterr().out.splitlines()
                if not line.startswith("jax 9.9.9"))
    assert rows["jax.jit"] == rows["jax.jit(static_argnums=)"] == "found"
    assert rows["jax.jit(donate_argnums=)"] == "missing"
    assert rows["jax.old"] == "deprecated" and rows["jax.gone"] == "removed"
    assert rows["jax.nowhere"] == "missing"
    assert rows["jax.Mesh(2 positional)"] == "found"
    assert rows["jax.Mesh(3 positional)"] == rows["jax.Mesh(axis_types=)"] == "missing"
    assert rows["config option jax_enable_x64"] == "found"
    assert rows["config option jax_renamed_option"] == "missing"
