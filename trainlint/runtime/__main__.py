"""``python -m trainlint.runtime smoke|confirm ...``: the same as ``trainlint smoke|confirm``."""

from trainlint.runtime.cli import main

raise SystemExit(main())
