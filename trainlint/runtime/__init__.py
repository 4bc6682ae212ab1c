"""The runtime companion: run training code under a monitor and report on its health.

Needs torch (``pip install trainlint[runtime]``); the linter itself never imports this package.
"""

from trainlint.runtime.monitor import Monitor, Record, StepRecord, StopRun, watch

__all__ = ["Monitor", "Record", "StepRecord", "StopRun", "watch"]
