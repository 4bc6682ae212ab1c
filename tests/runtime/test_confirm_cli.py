"""``trainlint confirm`` through the real command line: a user's project, and the rule examples."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from conftest import RUNTIME_FIXTURES, run_trainlint  # noqa: E402


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
        if with_fix:  # the rule exists and fixes: its fix must be shown to work, measured
            assert example["status"] in ("confirmed", "not reproduced on cpu"), example
        else:  # written before its rule: said plainly, never faked
            assert example["status"] == "no fix produced", example
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
