"""What "reproduced" and "confirmed" mean: the checks each example declares."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("torch")

from trainlint.runtime.confirm import (  # noqa: E402
    CONFIRMED,
    NOT_CONFIRMED,
    Check,
    ExampleSpec,
    example_specs,
    judge,
)
from trainlint.runtime.records import OptimizerRecord, Record, StepRecord  # noqa: E402
from trainlint.runtime.report import summarize  # noqa: E402


def report_with(losses: list[float], norm: float = 1.0):
    steps = [StepRecord(i, 0, v, norm, norm, 0, 0, None, False, 1) for i, v in enumerate(losses)]
    return summarize(Record(steps=steps, backward_losses=losses, backward_calls=len(losses), optimizers=[OptimizerRecord("SGD")]))


def spec(original, fixed) -> ExampleSpec:
    no_file = Path("-")  # judged on reports made here, not by running an example
    return ExampleSpec(path=no_file, rules=["TL000"], steps=10, unsafe_fixes=False, original=original, fixed=fixed)


def test_confirmed_only_when_the_original_shows_the_failure_and_the_fix_removes_it():
    stuck, learning = report_with([1.0] * 20), report_with([1.0 - 0.04 * i for i in range(20)])
    rule = spec([Check("loss_fell", "is", False)], [Check("loss_fell", "is", True)])
    assert judge(rule, stuck, learning, "cpu") == (CONFIRMED, "")
    status, detail = judge(rule, learning, learning, "cpu")
    assert status == "not reproduced on cpu" and detail == "original did not show: loss_fell is False"
    assert judge(rule, stuck, stuck, "cpu")[0] == NOT_CONFIRMED


def test_checks_relative_to_the_original_and_nan_never_passes():
    original, fixed = report_with([1.0] * 5, norm=1e-9), report_with([1.0] * 5, norm=1e-5)
    check = Check("grad_norm_median", ">", "1000x original")
    assert check.holds({"grad_norm_median": 1e-5}, {"grad_norm_median": 1e-9})
    assert not check.holds({"grad_norm_median": 1e-7}, {"grad_norm_median": 1e-9})
    assert not Check("loss_ratio", "<", 1.0).holds({"loss_ratio": math.nan})
    assert judge(spec([], [check]), original, fixed, "cpu")[0] == CONFIRMED


def test_every_example_declares_its_rules_and_checks():
    specs = example_specs()
    fixable = (101, 102, 103, 104, 105, 106, 107, 108, 109, 201, 202, 203, 204, 205, 301, 302, 401, 402, 403)
    assert {s.name for s in specs} >= {f"tl{n}" for n in fixable}
    for s in specs:
        assert s.name.split("_")[0].upper() == s.rules[0] and s.original and s.fixed
        assert all(c.metric and c.op for c in s.original + s.fixed)
    assert [s.name for s in example_specs(["tl107"])] == ["tl101_tl107_tl109", "tl107", "tl107_tl109_flag_skip"]


def test_every_rule_with_a_fix_declares_what_confirm_measures_on_a_user_s_script():
    from trainlint.rule import all_rules
    from trainlint.runtime.confirm import rule_effects
    from trainlint.runtime.effects import EFFECTS

    fixable = {code for code, rule in all_rules().items() if rule.fix_applicability}
    declared = rule_effects()
    assert fixable <= set(declared)
    for spec in declared.values():
        assert spec.effects and set(spec.effects) <= set(EFFECTS) and spec.shows_with


def test_a_fixed_run_that_raises_or_goes_non_finite_is_worse():
    from trainlint.runtime.effects import worse_than
    from trainlint.runtime.records import ExceptionRecord

    learning = report_with([1.0 - 0.04 * i for i in range(20)])
    raised = summarize(
        Record(steps=[], backward_losses=[1.0], backward_calls=1, exception=ExceptionRecord("ValueError", "bad", ""))
    )
    assert worse_than(learning, raised) == [
        "the fixed run raised ValueError: bad",
        "the fixed run is unhealthy: raised ValueError: bad",
    ]
    nan = report_with([1.0] * 10 + [math.nan] * 10)
    assert worse_than(learning, nan)[0] == "more non-finite losses (0 -> 10)"
    assert worse_than(nan, learning) == []


def report_with_memory(memory_mb: list[float]):
    steps = [StepRecord(i, 0, 1.0, 1.0, 1.0, 0, 0, None, False, 1, memory_mb=m) for i, m in enumerate(memory_mb)]
    return summarize(Record(steps=steps, backward_losses=[1.0] * len(steps), backward_calls=len(steps), optimizers=[OptimizerRecord("SGD")]))


def test_memory_growth_is_measured_over_the_second_half_and_judged_by_memory_flat():
    from trainlint.runtime.effects import EFFECTS, NOT_REPRODUCED, numbers

    # The first steps allocate (optimizer state, caches); a kept graph goes on growing after them.
    growing = report_with_memory([100.0, 150.0] + [150.0 + 2.0 * i for i in range(18)])
    flat = report_with_memory([100.0, 150.0] + [150.0] * 18)
    assert growing.memory_growth_mb == pytest.approx(2.0) and flat.memory_growth_mb == 0.0
    judged = EFFECTS["memory_flat"](numbers(growing)[0], numbers(flat)[0])
    assert judged.status == CONFIRMED and "+2.05e+03 KiB per step -> +0 KiB per step" in judged.detail
    assert EFFECTS["memory_flat"](numbers(growing)[0], numbers(growing)[0]).status == NOT_CONFIRMED
    assert EFFECTS["memory_flat"](numbers(flat)[0], numbers(flat)[0]).status == NOT_REPRODUCED
    assert report_with([1.0, 0.5, 0.2]).memory_growth_mb is None  # records made before memory was measured


def test_an_example_fixed_by_hand_must_be_reported_and_its_change_must_apply(tmp_path):
    """A rule without an automatic fix is confirmed on the change its finding asks for, made by
    hand: never when the rule does not report the example, never on a change that does not apply."""
    from trainlint.runtime.confirm import NO_FIX, NOT_REPORTED, confirm_example, load_spec

    quiet = tmp_path / "tl304.py"
    quiet.write_text(
        'CONFIRM = {"rules": ["TL304"], "steps": 2, "by_hand": [("x", "y")], "original": [], "fixed": []}\n'
        "def main():\n    return 1\n"
    )
    result = confirm_example(load_spec(quiet), device="cpu")
    assert (result.status, result.detail, result.original) == (NOT_REPORTED, "TL304 reported nothing in this example", None)

    example = (Path(__file__).parents[2] / "trainlint" / "runtime" / "examples" / "tl304.py").read_text()
    stale = tmp_path / "tl304_stale.py"
    stale.write_text(example.replace("            return x + self.proj(x)\n", "            out = x + self.proj(x)\n            return out\n"))
    result = confirm_example(load_spec(stale), device="cpu")
    assert result.status == NO_FIX and result.detail.startswith("the change by hand expects")
    assert load_spec(Path(__file__).parents[2] / "trainlint" / "runtime" / "examples" / "tl304.py").by_hand
