"""``python -m trainlint``. Python puts the current directory first on ``sys.path`` for ``-m``:
in an untrusted checkout, a ``libcst.py`` (or ``json.py``) at its root would be imported in
place of the real module. trainlint is already imported by now, so the entry goes before any
other import (the ``trainlint`` console script and ``python -P``/``-I`` never add it)."""

import os
import sys

if sys.path and not getattr(sys.flags, "safe_path", False) and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from trainlint.cli import main  # noqa: E402

raise SystemExit(main())
