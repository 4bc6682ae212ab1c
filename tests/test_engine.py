"""Engine behaviours that no single rule owns."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from trainlint.api import lint_source
from trainlint.config import Settings
from trainlint.context import FileContext
from trainlint.engine import Linter
from trainlint.findings import Finding
from trainlint.rule import _REGISTRY, Rule


def test_a_long_expression_chain_is_positioned_not_an_internal_error() -> None:
    chain = " + ".join(["a"] * 1500)
    source = f"import torch\nx = torch.log(torch.softmax(a, dim=1)) + {chain}\n"
    assert [(f.code, f.start.row, f.start.column) for f in lint_source(source, "deep.py")] == [("TL202", 2, 5)]


def test_an_expression_too_deep_for_the_parser_is_one_syntax_finding() -> None:
    chain = " + ".join(["a"] * 6000)
    findings = lint_source(f"import torch\nx = {chain}\n", "deeper.py")
    assert [f.code for f in findings] == ["TL001"]


@pytest.fixture
def broken_rule() -> Iterator[type[Rule]]:
    class Broken(Rule):
        """## What it does\nFails.\n## Why is this bad?\nIt is a test."""

        code = "TL998"
        name = "broken"
        summary = "always raises"

        def check(self, ctx: FileContext) -> Iterator[Finding]:
            raise ValueError("boom")

    yield Broken
    del _REGISTRY["TL998"]


def test_an_internal_error_names_the_rule_and_the_other_rules_still_run(broken_rule: type[Rule]) -> None:
    linter = Linter(Settings(select=["TL998", "TL202"]))
    findings = linter.lint("import torch\ny = torch.log(torch.softmax(x, dim=1))\n", "train.py")
    assert [f.code for f in findings] == ["TL003", "TL202"]
    assert "TL998 (broken)" in findings[0].message and "ValueError: boom" in findings[0].message


def test_past_its_budget_of_questions_a_file_gets_unknown_answers_that_are_not_cached(monkeypatch) -> None:
    """Answers cut by a cycle are not cached, so some shapes ask the same questions again and
    again; past the per-file budget the engine answers "unknown" and remembers nothing of it."""
    from trainlint.analysis.values import guard as guard_module
    from trainlint.analysis.values.domain import UNKNOWN

    monkeypatch.setattr(guard_module, "MAX_QUESTIONS_PER_FILE", 3)
    guard = guard_module.EvaluationGuard()
    cache: dict[str, tuple[object, frozenset]] = {}
    answers = [guard.answer(key, cache, key, lambda: "known", on_cycle=None) for key in "abcd"]
    assert answers == ["known", "known", "known", UNKNOWN]
    assert sorted(cache) == ["a", "b", "c"]  # the fourth was not computed, so not cached
    guard.computed = 0  # the next linted file (ProjectIndex.consulted = {} resets it)
    assert guard.answer("d", cache, "d", lambda: "known", on_cycle=None) == "known"


def test_a_linted_files_tree_is_never_left_to_the_cyclic_garbage_collector(tmp_path) -> None:
    """The analyses of a file refer back to its context: unless the context lets them go once
    the next file is linted, each tree (hundreds of thousands of objects on a real model file)
    becomes cyclic garbage that Python's collector must scan to free. Those scans were a fifth
    of a run on a model zoo."""
    import gc

    import libcst as cst

    from trainlint.project import ProjectIndex

    train = (
        "import torch\nfrom torch import nn\nmodel = nn.Sequential(nn.Linear(4, 2), nn.Softmax(dim=1))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\nfor x in range(3):\n"
        "    loss = -torch.log(model(x)).mean()\n    loss.backward()\n    opt.step()\n"
    )
    texts = {name: train.replace("opt", name) for name in ("first", "second", "third")}
    for name, text in texts.items():
        (tmp_path / f"{name}.py").write_text(text)
    linter = Linter(Settings(), ProjectIndex([tmp_path]))
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds unreachable is kept in gc.garbage
    try:
        for name, text in texts.items():
            assert linter.lint(text, f"{name}.py", tmp_path / f"{name}.py")  # the analyses ran
        gc.collect()
        assert not [found for found in gc.garbage if isinstance(found, cst.Module)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
