"""A stop that holds, and options that go where the user meant them to go."""

from __future__ import annotations

import json
import re
import time

import pytest

pytest.importorskip("torch")

from conftest import RUNTIME_FIXTURES, run_trainlint  # noqa: E402

from trainlint.runtime.cli import main  # noqa: E402
from trainlint.runtime.smoke import run_script  # noqa: E402


def printed_losses(stdout: str) -> list[float]:
    """The losses the script printed itself ("step 3 loss 0.25")."""
    return [float(m) for m in re.findall(r"^step \d+ loss (\S+)$", stdout, flags=re.MULTILINE)]


def test_a_script_that_catches_everything_is_stopped_at_the_step_limit(tmp_path):
    out = tmp_path / "smoke.json"
    result = run_trainlint("smoke", "--steps", "5", "--json", str(out), str(RUNTIME_FIXTURES / "swallow_train.py"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "finished after" not in result.stdout  # 300 iterations unmonitored; it never got there
    assert result.stdout.count("skipped a bad batch") == 2  # caught twice, then ended for good
    assert result.stdout.count("epoch 0 failed") == 1 and "epoch 1" not in result.stdout
    assert "warning: the script caught trainlint's stop 2 time(s) (a bare `except:`" in result.stdout
    data = json.loads(out.read_text())
    record = data["runs"]["smoke"]["record"]
    assert record["ending"] == {"stopped_by": "steps", "limit": 5, "steps_wanted": 5, "swallowed_stops": 2}
    assert data["runs"]["smoke"]["report"]["ending"] == "stopped after 5 steps (--steps 5), caught by the script 2x"
    # The five steps are the script's own: the losses it printed (four: the fifth print was cut).
    steps = [s["loss"] for s in record["steps"]]
    assert len(steps) == 5 and steps[:4] == printed_losses(result.stdout)


def test_a_loop_without_hooks_is_ended_by_the_wall_clock():
    started = time.monotonic()
    run = run_script(RUNTIME_FIXTURES / "hangs_after_training.py", steps=10, max_seconds=1.0, device="cpu")
    assert time.monotonic() - started < 30
    ending = run.record.ending
    assert (ending.stopped_by, ending.limit) == ("seconds", 1.0)
    assert len(run.record.steps) == 3 and run.record.exception is None
    assert run.report.ending == "stopped after 1 s (--max-seconds), at step 3 of 10"


def test_a_script_that_ends_early_says_how_far_it_got(capsys):
    code = main(["smoke", "--steps", "10", str(RUNTIME_FIXTURES / "args_train.py"), "--lr", "0.05", "--epochs", "5"])
    out = capsys.readouterr().out
    assert code == 0, out
    run_row = next(line for line in out.splitlines() if line.startswith("run "))
    assert run_row.split(None, 1)[1] == "the script ended after 5 of 10 steps"
    assert "finished all epochs" in out


def test_options_after_the_script_are_the_script_s_even_with_trainlint_s_names(capsys):
    code = main(["smoke", "--steps", "4", str(RUNTIME_FIXTURES / "collide_train.py"), "--device=cpu", "--steps", "50"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "script options: device=cpu steps=50" in out  # as `python collide_train.py ...` gets them
    assert "stopped after 4 steps (--steps 4)" in out  # and trainlint kept its own --steps
    assert len(printed_losses(out)) == 3  # the fourth step's print came after the stop
    assert "cpu mapping" not in out  # the script named CUDA, but ran on the CPU: nothing was mapped


def test_a_trainlint_option_given_after_the_script_is_explained(capsys):
    code = main(["smoke", "--steps", "4", str(RUNTIME_FIXTURES / "args_train.py"), "--lr", "0.1", "--steps", "3"])
    captured = capsys.readouterr()
    assert code == 1
    assert "error: unrecognized arguments: --steps 3" in captured.err  # the script's argparse
    assert (
        "note: --steps came after the script's name, so it went to the script; trainlint's own options go "
        "before it: trainlint smoke --steps ..."
    ) in captured.out
