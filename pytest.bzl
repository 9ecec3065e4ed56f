"""`pytest_test`: a py_test that runs its test files under pytest (tests/pytest_main.py)."""

load("@rules_python//python:defs.bzl", "py_test")

def pytest_test(name, srcs, deps = [], data = [], **kwargs):
    """A py_test of `srcs` whose main is tests/pytest_main.py, given the files as arguments.

    Args:
      name: the target name (test_x for tests/test_x.py).
      srcs: the test files.
      deps: what they import (the runner adds :pytest_main).
      data: files they read.
      **kwargs: passed to py_test (size, timeout, tags, ...).
    """
    py_test(
        name = name,
        srcs = srcs + ["tests/pytest_main.py"],
        main = "tests/pytest_main.py",
        args = ["$(location %s)" % src for src in srcs],
        data = data,
        deps = deps + [":pytest_main"],
        **kwargs
    )
