"""The main of every `pytest_test` target (pytest.bzl): runs the test files it is given."""

import sys

import pytest

if __name__ == "__main__":
    sys.exit(pytest.main(sys.argv[1:]))
