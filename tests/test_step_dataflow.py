"""The step as a dataflow: folds over every path without listing them, decisions that hold
across iterations or not, skips written as flags, loops over optimizers, the facts rules ask."""

from __future__ import annotations

import textwrap

import libcst as cst

from trainlint.analysis.training_step import EventKind, TrainingStep, TrainingSteps
from trainlint.config import Settings, apply_cli_overrides
from trainlint.context import FileContext
from trainlint.engine import Linter
from trainlint.project import ProjectIndex
from trainlint.source import SourceText

K = EventKind


def only_step(code: str) -> TrainingStep:
    text = textwrap.dedent(code).lstrip("\n")
    ctx = FileContext("train.py", SourceText(text), cst.parse_module(text), ProjectIndex([]))
    steps = ctx.get(TrainingSteps).all_steps()
    assert len(steps) == 1
    return steps[0]


def findings(code: str, rule: str) -> list[tuple[int, int, str]]:
    linter = Linter(apply_cli_overrides(Settings(), [rule], None, None), ProjectIndex([]))
    text = textwrap.dedent(code).lstrip("\n")
    return [(f.start.row, f.start.column, f.message) for f in linter.lint(text, "train.py", None) if f.code == rule]


def test_twenty_logging_branches_around_a_skip_do_not_hide_it() -> None:
    logging = "\n".join(
        f"        if step % {i + 2} == 1:\n"
        f"            writer.add_scalar('grad/layer{i}', model.layers[{i}].weight.grad.norm(), step)"
        for i in range(20)
    )
    code = (
        "import torch\n\n"
        "def train(model, loader, writer):\n"
        "    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "    for step, (x, y) in enumerate(loader):\n"
        "        loss = torch.nn.functional.mse_loss(model(x), y)\n"
        "        loss.backward()\n"
        f"{logging}\n"
        "        if torch.isnan(loss):\n"
        "            continue\n"
        "        optimizer.step()\n"
        "        optimizer.zero_grad()\n"
    )
    step = only_step(code)
    assert len(step.of_kind(K.GRAD_INSPECT)) == 20  # 2**20 paths through them
    found = findings(code, "TL107")
    assert [(row, column) for row, column, _ in found] == [(49, 13)]
    assert "skips the step of `optimizer`" in found[0][2]


def test_a_decision_on_a_value_the_loop_does_not_change_holds_on_the_next_iteration() -> None:
    step = only_step(
        """
        import torch

        class Trainer:
            def fit(self, loader):
                for i, batch in enumerate(loader):
                    self.model(batch).backward()
                    if self.use_clip:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                    if (i + 1) % self.accumulation == 0:
                        self.optimizer.step()
                    self.optimizer.zero_grad()
        """
    )
    clip, opt_step = step.of_kind(K.CLIP)[0], step.of_kind(K.OPT_STEP)[0]

    def seen(kinds: frozenset, event) -> frozenset:
        return kinds | {event.kind}

    fold = step.flow.fold(frozenset(), seen, next_iteration=True, carry=lambda kinds: frozenset({"next"}) | kinds)
    # on the next iteration the clip runs only after an iteration that clipped too ...
    assert fold.before_next(clip) and all(K.CLIP in kinds for kinds in fold.before_next(clip))
    # ... while the accumulation test is free: that iteration may or may not have stepped
    assert {K.OPT_STEP in kinds for kinds in fold.before_next(opt_step)} == {True, False}


def test_a_flag_set_on_a_finiteness_test_makes_the_side_without_the_step_a_skip() -> None:
    step = only_step(
        """
        import torch

        def train(model, loader, optimizer):
            for batch in loader:
                model(batch).backward()
                skip = not all(torch.isfinite(p.grad).all() for p in model.parameters())
                if not skip:
                    optimizer.step()
                optimizer.zero_grad()
        """
    )
    skip = step.of_kind(K.SKIP)
    assert len(skip) == 1 and skip[0].skip_keyword == "if" and skip[0].guard.checks_finiteness
    assert [e.kind for e in skip[0].bypassed] == [K.OPT_STEP]
    assert skip[0].skip_text == "`if not skip:`"


def test_an_accumulation_test_is_not_a_skip() -> None:
    step = only_step(
        """
        def train(model, loader, optimizer, accumulation):
            for i, batch in enumerate(loader):
                model(batch).backward()
                if (i + 1) % accumulation == 0:
                    optimizer.step()
                    optimizer.zero_grad()
        """
    )
    assert step.of_kind(K.SKIP) == []


def test_a_loop_over_the_optimizers_it_unscales_runs() -> None:
    step = only_step(
        """
        import torch

        def train(model, loader, optimizers):
            scaler = torch.amp.GradScaler("cuda")
            for batch in loader:
                scaler.scale(model(batch)).backward()
                for opt in optimizers:
                    scaler.unscale_(opt)
                for p in model.parameters():
                    print(p.grad.norm())
                for opt in optimizers:
                    scaler.step(opt)
                scaler.update()
        """
    )
    assert all(K.UNSCALE in [e.kind for e in path] for path in step.paths())
    # the loop over parameters may run no time: some path never inspects
    assert any(K.GRAD_INSPECT not in [e.kind for e in path] for path in step.paths())
    inspection = step.of_kind(K.GRAD_INSPECT)[0]
    assert all(not state.scaled for state in step.states.before(inspection))


def test_the_facts_carry_an_unscale_without_update_into_the_next_iteration() -> None:
    step = only_step(
        """
        import torch

        def train(model, loader, optimizer, accumulation):
            scaler = torch.amp.GradScaler("cuda")
            for i, batch in enumerate(loader):
                scaler.scale(model(batch)).backward()
                scaler.unscale_(optimizer)
                if (i + 1) % accumulation == 0:
                    scaler.step(optimizer)
                    scaler.update()
        """
    )
    unscale = step.of_kind(K.UNSCALE)[0]
    assert not any(state.unscaled_of("scaler", "optimizer") for state in step.states.before(unscale))
    assert any(state.unscaled_of("scaler", "optimizer") for state in step.states.before_next(unscale))
    assert all(not state.after_skip for state in step.states.before_next(unscale))


def test_a_skip_leaves_gradients_to_the_next_iteration_only_when_nothing_clears_them() -> None:
    code = """
        import torch

        def train(model, loader, optimizer):
            for batch in loader:
                {top}
                loss = model(batch)
                loss.backward()
                if torch.isnan(loss):
                    continue
                optimizer.step()
                optimizer.zero_grad()
        """
    leaking = only_step(code.format(top="pass"))
    step_event = leaking.of_kind(K.OPT_STEP)[0]
    assert any(state.left_by_skip for state in leaking.states.before_next(step_event))
    cleared = only_step(code.format(top="optimizer.zero_grad()"))
    step_event = cleared.of_kind(K.OPT_STEP)[0]
    assert not any(state.left_by_skip for state in cleared.states.before_next(step_event))


def test_feeding_of_a_gan_step() -> None:
    step = only_step(
        """
        def train(netG, netD, loader, opt_g, opt_d):
            for real in loader:
                netD(real).mean().backward()
                opt_d.step()
                opt_d.zero_grad()
                netD(netG(real)).mean().backward()
                opt_g.step()
                opt_g.zero_grad()
        """
    )
    backward_d, backward_g = step.of_kind(K.BACKWARD)
    step_d, step_g = step.of_kind(K.OPT_STEP)
    assert {feed.backwards for feed in step.feeding.of(step_d)} == {(backward_d,)}
    assert {feed.backwards for feed in step.feeding.of(step_g)} == {(backward_g,)}


def test_after_an_event_says_whether_some_path_escapes() -> None:
    step = only_step(
        """
        import torch

        def train(model, loader, optimizer, scaler, log_every):
            for i, batch in enumerate(loader):
                scaler.scale(model(batch)).backward()
                if i % log_every == 0:
                    scaler.update()
                optimizer.zero_grad()
        """
    )
    backward = step.of_kind(K.SCALED_BACKWARD)[0]
    reach = step.flow.after(backward, lambda e: e.kind is K.SCALER_UPDATE)
    assert [e.kind for e in reach.events] == [K.SCALER_UPDATE, K.ZERO_GRAD]
    assert reach.escapes  # the iterations that do not log never update


def test_the_parts_of_an_and_or_an_or_are_decisions_of_their_own() -> None:
    # The unscale runs only where `accumulate` is false (the `else` of an `or`), and every such
    # iteration also reaches the update under `if not accumulate:`; a part that calls something
    # (`ready(step)`) decides nothing, so the twin below still reports.
    template = """
        import torch

        def train(model, loader, optimizer, accumulate, log_now):
            scaler = torch.amp.GradScaler("cuda")
            for step, (x, y) in enumerate(loader):
                scaler.scale(model(x, y)).backward()
                if {test}:
                    print("accumulating")
                else:
                    scaler.unscale_(optimizer)
                if not accumulate:
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad()
        """
    assert findings(template.format(test="accumulate or not log_now"), "TL102") == []
    assert findings(template.format(test="(accumulate or not log_now) or step < 10"), "TL102") == []
    assert [row for row, _, _ in findings(template.format(test="ready(step) or not log_now"), "TL102")] == [10]


def test_a_helpers_own_flag_named_like_the_steps_is_the_same_setting() -> None:
    template = """
        import torch

        class Trainer:
            def __init__(self, model, opt, precision):
                self.model, self.opt, self.precision = model, opt, precision
                self.scaler = torch.amp.GradScaler("cuda")

            def amp(self):
                return self.precision == "fp16"

            def fit(self, loader):
                use_amp = self.amp()
                for x in loader:
                    self.backward(x)
                    if use_amp:
                        self.scaler.step(self.opt)
                        self.scaler.update()
                    else:
                        self.opt.step()
                    self.opt.zero_grad()

            def backward(self, x):
                {name} = self.amp()
                loss = self.model(x).mean()
                if {name}:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
        """
    same = template.format(name="use_amp")
    assert findings(same, "TL104") == [] and findings(same, "TL106") == []
    other = template.format(name="amp_on")  # a different name: the helper may decide otherwise
    assert [row for row, _, _ in findings(other, "TL104")] == [19]  # `self.opt.step()`
