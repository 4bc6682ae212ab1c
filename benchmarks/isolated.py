"""Running trainlint and Python on a checkout without importing anything from it.

``python -m trainlint`` (and ``python -c``) put the current directory first on ``sys.path``: run
inside an untrusted checkout, they would import a ``libcst.py`` (or a ``trainlint/`` package, as
in a copy of trainlint's own repository) from it. The benchmarks run the installed console script,
or Python in isolated mode (``-I``: no current directory, no PYTHON* variables, no user site).
"""

from __future__ import annotations

import sys
from pathlib import Path


def python_command() -> list[str]:
    return [sys.executable, "-I"]


def trainlint_command() -> list[str]:
    """The ``trainlint`` console script next to this interpreter, else ``python -I -m trainlint``."""
    script = Path(sys.executable).with_name("trainlint")
    return [str(script)] if script.is_file() else [*python_command(), "-m", "trainlint"]
