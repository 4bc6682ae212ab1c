"""How ``trainlint smoke|confirm`` split their own options from the script's."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainlint.runtime.cli import main, parse

RAISES = Path(__file__).resolve().parents[1] / "fixtures" / "runtime" / "raises.py"


def test_options_before_the_script_are_trainlint_s_and_after_it_the_script_s():
    options = parse(["smoke", "--device", "cpu", "--steps", "5", "train.py", "--lr", "0.1", "--device=cuda", "data/"])
    assert options.script == Path("train.py")
    assert options.script_args == ["--lr", "0.1", "--device=cuda", "data/"]  # python train.py would get these
    assert (options.steps, options.device, options.threads) == (5, "cpu", 1)


def test_double_dash_ends_trainlint_s_options_and_is_passed_on_after_the_script():
    options = parse(["smoke", "--steps=3", "--max-seconds", "2.5", "--", "-odd-name.py", "--steps", "100"])
    assert (options.steps, options.max_seconds, options.device) == (3, 2.5, "auto")
    assert options.script == Path("-odd-name.py") and options.script_args == ["--steps", "100"]
    after = parse(["smoke", "train.py", "--", "--epochs", "3"])
    assert after.script_args == ["--", "--epochs", "3"]  # the script's own argv, as given


def test_confirm_options_and_example_codes():
    options = parse(["confirm", "--unsafe-fixes", "--select", "tl101,TL403", "--json", "o.json", "train.py"])
    assert options.unsafe_fixes and options.select == ["TL101", "TL403"] and options.json_path == Path("o.json")
    examples = parse(["confirm", "--examples", "TL101", "tl402,TL403", "--markdown", "t.md"])
    assert examples.examples and examples.codes == ["TL101", "tl402", "TL403"] and examples.script is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["smoke"], "smoke: which script?"),
        (["smoke", "--steps"], "--steps needs a value"),
        (["smoke", "--steps", "many", "train.py"], "--steps: not a number: 'many'"),
        (["smoke", "--max-seconds", "0", str(RAISES)], "--max-seconds must be more than 0"),
        (["smoke", "--lr", "0.1", "train.py"], "unknown option --lr (the script's options go after its name)"),
        (["confirm", "no/such/train.py"], "no such script: no/such/train.py"),
        (["lint"], "expected 'smoke' or 'confirm'"),
        (["confirm", "--select", "TL999", str(RAISES)], "--select: unknown rule code or prefix 'TL999'"),
    ],
)
def test_usage_errors_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
