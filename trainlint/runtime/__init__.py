"""The runtime companion: run training code under a monitor and report on its health.

Needs torch (``pip install trainlint[runtime]``); the linter itself never imports this package.

* ``watch()``: a monitor of every optimizer and GradScaler used inside it (``with watch() as m``
  or ``m = watch().start()`` ... ``m.stop()``); ``m.record`` holds what it measured per step.
* ``summarize(record)``: the health report (verdict, reasons, per optimizer); ``format_report``
  prints it, ``plot_png`` draws it.
* ``run_script(path, args, steps=N)``: ``trainlint smoke`` as a function.
* ``trainlint.runtime.cli.main(["smoke" | "confirm", ...])``: the commands.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use, so that ``trainlint smoke --help`` and usage errors answer before
# torch (seconds to import) is loaded.
_EXPORTS = {
    "HealthReport": "report",
    "Monitor": "monitor",
    "OptimizerRecord": "records",
    "Record": "records",
    "SmokeRun": "smoke",
    "StepRecord": "records",
    "StopRun": "stopping",
    "format_report": "report",
    "format_side_by_side": "report",
    "plot_png": "plot",
    "run_script": "smoke",
    "summarize": "report",
    "watch": "monitor",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainlint.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"trainlint.runtime.{_EXPORTS[name]}"), name)
