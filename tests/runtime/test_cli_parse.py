"""How ``trainlint smoke|confirm`` split their own options from the script's."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainlint.runtime.cli import main, parse

RAISES = Path(__file__).resolve().parents[1] / "fixtures" / "runtime" / "raises.py"


def test_options_anywhere_and_the_rest_goes_to_the_script():
    options = parse(["smoke", "--device", "cpu", "train.py", "--lr", "0.1", "--steps", "5", "data/"])
    assert options.script == Path("train.py") and options.script_args == ["--lr", "0.1", "data/"]
    assert (options.steps, options.device, options.threads) == (5, "cpu", 1)


def test_after_double_dash_everything_is_the_script_s():
    options = parse(["smoke", "train.py", "--steps=3", "--", "--steps", "100", "--device", "tpu"])
    assert options.steps == 3 and options.device == "auto"
    assert options.script_args == ["--steps", "100", "--device", "tpu"]


def test_confirm_options_and_example_codes():
    options = parse(["confirm", "train.py", "--unsafe-fixes", "--select", "tl101,TL403", "--json", "o.json"])
    assert options.unsafe_fixes and options.select == ["TL101", "TL403"] and options.json_path == Path("o.json")
    examples = parse(["confirm", "--examples", "TL101", "tl402,TL403", "--markdown", "t.md"])
    assert examples.examples and examples.codes == ["TL101", "tl402", "TL403"] and examples.script is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["smoke"], "smoke: which script?"),
        (["smoke", "train.py", "--steps"], "--steps needs a value"),
        (["smoke", "train.py", "--steps", "many"], "--steps: not a number: 'many'"),
        (["confirm", "no/such/train.py"], "no such script: no/such/train.py"),
        (["lint"], "expected 'smoke' or 'confirm'"),
        (["confirm", str(RAISES), "--select", "TL999"], "--select: unknown rule code or prefix 'TL999'"),
    ],
)
def test_usage_errors_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
