"""``trainlint confirm`` through the real command line: a user's project, and the rule examples."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT, RUNTIME_FIXTURES, run_trainlint  # noqa: E402

EXAMPLES = ROOT / "trainlint" / "runtime" / "examples"


def test_confirm_fixes_a_local_module_in_memory_and_runs_both():
    project = RUNTIME_FIXTURES / "project"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in project.iterdir()}
    result = run_trainlint("confirm", "--steps", "60", str(project / "train.py"))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "fixed in memory (1):" in out
    assert "helpers.py:13:9: TL403" in out  # the anti-pattern is in the imported module
    verdict = next(line for line in out.splitlines() if line.startswith("verdict"))
    assert verdict.split() == ["verdict", "unhealthy", "healthy"]
    assert "original: unhealthy: loss rose (13.4 -> " in out
    # Nothing on disk changed: same files, same bytes, same times, no __pycache__ left behind.
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in project.iterdir()} == before


def test_confirm_examples_confirms_every_rule_that_has_a_fix(tmp_path):
    from trainlint.rule import all_rules

    out = tmp_path / "examples.json"
    markdown = tmp_path / "examples.md"
    result = run_trainlint("confirm", "--examples", "--device", "cpu", "--json", str(out), "--markdown", str(markdown))
    data = json.loads(out.read_text())
    rules = all_rules()
    for example in data["examples"]:
        with_fix = all(code in rules and rules[code].fix_applicability for code in example["rules"])
        if with_fix or example["by_hand"]:  # its fix (or the change made by hand) is shown to work, measured
            assert example["status"] in ("confirmed", "not reproduced on cpu"), example
        else:  # written before its rule: said plainly, never faked
            assert example["status"] == "no fix produced", example
    by_hand = {e["example"] for e in data["examples"] if e["by_hand"]}
    assert by_hand == {"tl110", "tl303", "tl304", "tl305"}  # the rules without an automatic fix
    assert result.returncode == (0 if all(e["status"] != "no fix produced" for e in data["examples"]) else 1)
    assert data["provenance"].startswith("cpu, torch ")
    table = result.stdout.splitlines()
    assert table[0].startswith("trainlint confirm --examples: cpu, torch ")
    assert len([line for line in table if line.startswith("TL")]) == len(data["examples"])
    assert markdown.read_text().startswith("Confirmed on cpu, torch ")
    assert "| rule | example | original | fixed | result |" in markdown.read_text()


def test_confirm_examples_for_chosen_rules_in_process(capsys):
    from trainlint.runtime.cli import main

    assert main(["confirm", "--examples", "tl403,TL402", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["rule", "example", "original", "fixed", "result"]
    assert [line.split()[0] for line in lines[3:5]] == ["TL402", "TL403"]
    assert all(line.endswith("confirmed") for line in lines[3:5])
    assert lines[5].startswith("2/2 examples confirmed or not reproducible here")


def verdict_lines(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = lines.index("per finding, what these runs show:")
    return [line.strip() for line in lines[start + 1 :] if line.startswith("  ")]


def test_confirm_shows_lines_of_the_file_on_disk_and_the_json_says_what_ran(tmp_path, capsys):
    """Three findings, fixed in two passes: the second pass's are found in text the first pass had
    already changed (two lines further down), and are shown at their lines on disk."""
    from trainlint.runtime.cli import main

    script = tmp_path / "train.py"
    script.write_text((EXAMPLES / "tl101_tl107_tl109.py").read_text())
    out, png = tmp_path / "confirm.json", tmp_path / "confirm.png"
    code = main(["confirm", "--steps", "20", "--unsafe-fixes", "--json", str(out), "--png", str(png), str(script), "--lr", "1"])
    stdout = capsys.readouterr().out
    fixed = [line.strip().split(": ")[0] for line in stdout.splitlines() if line.startswith(f"  {script}:")]
    assert fixed == [f"{script}:44:20", f"{script}:45:13", f"{script}:45:13"]  # not 46 and 47
    data = json.loads(out.read_text())
    assert [(f["code"], f["row"], f["on_disk"]) for f in data["findings"]] == [
        ("TL101", 44, True), ("TL107", 45, True), ("TL109", 45, True),
    ]
    assert {k: data[k] for k in ("command", "script", "args", "device", "seed", "steps")} == {
        "command": "confirm", "script": str(script), "args": ["--lr", "1"], "device": "cpu", "seed": 0, "steps": 20,
    }
    assert data["torch"] == torch.__version__ and set(data["runs"]) == {"original", "fixed"}
    verdicts = {v["code"]: v["status"] for v in data["verdicts"]}
    assert verdicts["TL101"] == "confirmed"  # 0 steps applied -> every step applied
    assert verdict_lines(stdout)[0].startswith("TL101 ") and "(train.py:44): confirmed: steps applied 0/" in stdout
    assert code == data["exit_code"] == (0 if all(v["status"] != "not confirmed" for v in data["verdicts"]) else 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confirm.json", "confirm.png", "train.py"]


def test_an_effect_this_run_does_not_show_is_not_reproduced_and_says_what_would(capsys):
    from trainlint.runtime.cli import main

    code = main(["confirm", "--steps", "20", str(RUNTIME_FIXTURES / "never_zeroed.py"), "--lr", "1e-4"])
    lines = verdict_lines(capsys.readouterr().out)
    assert len(lines) == 1 and lines[0].startswith(
        "TL403 gradients-never-zeroed (never_zeroed.py:22): not reproduced in 20 steps on cpu: "
    )
    assert lines[0].endswith("what would show it: more steps (--steps 100): the accumulated gradient grows every step")
    assert code == 0  # honest: not reproduced is not a failure


def test_confirm_fails_when_the_original_shows_the_effect_and_the_fixed_run_keeps_it(capsys):
    from trainlint.runtime.cli import main

    code = main(["confirm", "--steps", "20", str(RUNTIME_FIXTURES / "never_zeroed.py"), "--lr", "5"])
    lines = verdict_lines(capsys.readouterr().out)
    assert lines[0].startswith("TL403 gradients-never-zeroed (never_zeroed.py:22): not confirmed: loss 9.46 -> nan")
    assert code == 1


def test_the_confirm_png_puts_both_runs_on_shared_axes(tmp_path):
    pytest.importorskip("matplotlib")
    from trainlint.runtime.confirm import confirm_script
    from trainlint.runtime.plot import build_figure

    result = confirm_script(RUNTIME_FIXTURES / "project" / "train.py", steps=60, device="cpu", seed=0, threads=1)
    runs = [("original", result.original.record, result.original.report), ("fixed", result.fixed.record, result.fixed.report)]
    figure = build_figure(runs, [str(v) for v in result.verdicts])
    (loss_o, loss_f), (norm_o, norm_f) = [figure.axes[:2], figure.axes[2:4]]
    assert loss_o.get_xlim() == loss_f.get_xlim() == norm_o.get_xlim()  # the same steps
    assert loss_o.get_ylim() == loss_f.get_ylim() and norm_o.get_ylim() == norm_f.get_ylim()  # the same scale
    assert norm_o.get_yscale() == norm_f.get_yscale() == "log"
    # The original's gradient norms reach 100x the fixed run's, and both fit the shared axis.
    low, high = norm_o.get_ylim()
    assert low <= result.fixed.report.grad_norm["p50"] and result.original.report.grad_norm["max"] <= high
    assert loss_o.get_title().startswith("original: unhealthy: loss rose") and loss_f.get_title() == "fixed: healthy"
    footer = figure.texts[-1].get_text()
    assert footer.startswith("TL403 gradients-never-zeroed (helpers.py:13): confirmed: loss 13.4 -> ")
