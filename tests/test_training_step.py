"""The training-step analysis: events in order, scalers and optimizers, helpers, paths, skips."""

from __future__ import annotations

import textwrap

import libcst as cst
import pytest

from trainlint.analysis.training_step import (
    BACKWARD_KINDS,
    EventKind,
    TrainingStep,
    TrainingSteps,
)
from trainlint.context import FileContext
from trainlint.project import ProjectIndex
from trainlint.source import SourceText

K = EventKind


def steps_of(code: str) -> tuple[FileContext, list[TrainingStep]]:
    text = textwrap.dedent(code).lstrip("\n")
    ctx = FileContext("train.py", SourceText(text), cst.parse_module(text), ProjectIndex([]))
    return ctx, ctx.get(TrainingSteps).steps


def only_step(code: str) -> tuple[FileContext, TrainingStep]:
    ctx, steps = steps_of(code)
    assert len(steps) == 1, [s.function.name.value for s in steps]
    return ctx, steps[0]


def kinds(events) -> list[EventKind]:
    return [e.kind for e in events]


def path_kinds(step: TrainingStep) -> set[tuple[EventKind, ...]]:
    return {tuple(kinds(p)) for p in step.paths()}


AMP_LOOP = """
import torch

def train(model, loader, optimizer, scaler):
    for x, y in loader:
        optimizer.zero_grad()
        with torch.autocast("cuda"):
            loss = model(x, y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if not torch.isfinite(torch.stack([p.grad.norm() for p in model.parameters()]).sum()):
            continue
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
"""


def test_events_of_a_loop_step_in_source_order() -> None:
    ctx, step = only_step(AMP_LOOP)
    assert isinstance(step.loop, cst.For)
    assert kinds(step.events) == [
        K.ZERO_GRAD, K.SCALED_BACKWARD, K.UNSCALE, K.GRAD_INSPECT, K.SKIP, K.CLIP, K.SCALER_STEP, K.SCALER_UPDATE,
    ]
    backward, unscale = step.events[1], step.events[2]
    assert backward.scaler == "scaler" and ctx.code(backward.target) == "loss"
    assert (unscale.scaler, unscale.optimizer) == ("scaler", "optimizer")
    assert ctx.code(step.events[3].node) == "p.grad.norm()"
    skip = step.events[4]
    assert skip.skip_keyword == "continue" and skip.guard.checks_finiteness and skip.guard.reads_grads
    assert list(step.scalers) == ["scaler"] and step.scalers["scaler"].constructor is None  # a parameter
    assert "optimizer" in step.optimizers


def test_paths_end_at_a_skip() -> None:
    _, step = only_step(AMP_LOOP)
    assert path_kinds(step) == {
        (K.ZERO_GRAD, K.SCALED_BACKWARD, K.UNSCALE, K.GRAD_INSPECT, K.SKIP),
        (K.ZERO_GRAD, K.SCALED_BACKWARD, K.UNSCALE, K.GRAD_INSPECT, K.CLIP, K.SCALER_STEP, K.SCALER_UPDATE),
    }


@pytest.mark.parametrize(
    "imports,constructor,expected",
    [
        ("import torch", "torch.amp.GradScaler('cuda')", "torch.amp.GradScaler"),
        ("import torch", "torch.cuda.amp.GradScaler()", "torch.cuda.amp.GradScaler"),
        ("import torch", "torch.cpu.amp.GradScaler()", "torch.cpu.amp.GradScaler"),
        ("from torch.cuda.amp import GradScaler as GS", "GS()", "torch.cuda.amp.GradScaler"),
        ("from torch.cuda import amp", "amp.GradScaler(enabled=True)", "torch.cuda.amp.GradScaler"),
    ],
)
def test_scaler_constructors_under_any_alias(imports: str, constructor: str, expected: str) -> None:
    _, step = only_step(
        f"""
        {imports}

        def train(model, loss, opt):
            grad_scaler = {constructor}
            grad_scaler.scale(loss).backward()
            grad_scaler.step(opt)
            grad_scaler.update()
        """
    )
    assert step.scalers["grad_scaler"].constructor == expected
    assert step.scalers["grad_scaler"].enabled is True
    assert kinds(step.events) == [K.SCALED_BACKWARD, K.SCALER_STEP, K.SCALER_UPDATE]


def test_attribute_scaler_made_in_init_with_a_runtime_flag() -> None:
    _, step = only_step(
        """
        import torch

        class Trainer:
            def __init__(self, model, amp):
                self.amp = amp
                self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
                self.scaler = torch.cuda.amp.GradScaler(enabled=self.amp)

            def step(self, loss):
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
        """
    )
    info = step.scalers["self.scaler"]
    assert (info.constructor, info.enabled) == ("torch.cuda.amp.GradScaler", None)
    optimizer = step.optimizers["self.optimizer"]
    assert (optimizer.constructor, optimizer.params_code) == ("torch.optim.AdamW", "model.parameters()")


def test_a_literally_disabled_scaler_is_no_scaler() -> None:
    _, step = only_step(
        """
        import torch

        def train(model, loss, opt):
            scaler = torch.cuda.amp.GradScaler(enabled=False)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            scaler.step(opt)
            scaler.update()
        """
    )
    assert step.scalers == {}
    assert kinds(step.events) == [K.BACKWARD, K.OPT_STEP]  # what a disabled scaler does


def test_a_scaler_from_an_unknown_function_is_uncertain() -> None:
    _, step = only_step(
        """
        from mylib import make_scaler

        def train(model, loss, opt):
            scaler = make_scaler()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            scaler.step(opt)
            scaler.update()
        """
    )
    assert step.scalers == {} and step.uncertain_scalers == {"scaler"}
    assert step.scaler_of(step.events[0]) is None


def test_a_scaler_passed_through_kwargs_is_uncertain() -> None:
    _, step = only_step(
        """
        def step(model, loss, opt, **kwargs):
            scaler = kwargs["scaler"]
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        """
    )
    assert step.scalers == {} and step.uncertain_scalers == {"scaler"}


def test_helpers_are_inlined_at_their_call_site_with_arguments_substituted() -> None:
    ctx, steps = steps_of(
        """
        import torch

        def unscale_and_clip(grad_scaler, opt, params):
            grad_scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 1.0)

        class Trainer:
            def _backward(self, loss):
                self.scaler.scale(loss).backward()

            def _grads_ok(self):
                return all(torch.isfinite(p.grad).all() for p in self.model.parameters())

            def train_step(self, loss):
                self._backward(loss)
                if not self._grads_ok():
                    return None
                unscale_and_clip(self.scaler, self.optimizer, self.model.parameters())
                self.scaler.step(self.optimizer)
                self.scaler.update()
                return loss
        """
    )
    assert [s.function.name.value for s in steps] == ["train_step"]  # _backward is inlined, not a step
    step = steps[0]
    assert kinds(step.events) == [
        K.SCALED_BACKWARD, K.GRAD_INSPECT, K.SKIP, K.UNSCALE, K.CLIP, K.SCALER_STEP, K.SCALER_UPDATE,
    ]
    backward, inspect, _, unscale = step.events[:4]
    assert ctx.code(backward.anchor) == "self._backward(loss)" and backward.via_helper.name.value == "_backward"
    assert ctx.code(backward.statement) == "self._backward(loss)\n"
    assert ctx.code(inspect.anchor) == "self._grads_ok()"
    assert (unscale.scaler, unscale.optimizer) == ("self.scaler", "self.optimizer")
    assert "self.scaler" in step.scalers


def test_exclusive_branches_are_separate_paths() -> None:
    _, step = only_step(
        """
        def train(model, loader, optimizer, scaler, clip):
            for x in loader:
                scaler.scale(model(x)).backward()
                if clip:
                    scaler.unscale_(optimizer)
                else:
                    scaler.unscale_(optimizer)
                scaler.step(optimizer)
                scaler.update()
        """
    )
    assert all(kinds(p).count(K.UNSCALE) == 1 for p in step.paths())


def test_two_ifs_on_one_flag_take_matching_branches() -> None:
    _, step = only_step(
        """
        def step(self, loss):
            if self.use_amp:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            if not self.use_amp:
                self.optimizer.step()
            else:
                self.scaler.step(self.optimizer)
                self.scaler.update()
        """
    )
    assert path_kinds(step) == {(K.SCALED_BACKWARD, K.SCALER_STEP, K.SCALER_UPDATE), (K.BACKWARD, K.OPT_STEP)}


def test_try_handlers_and_inner_loops() -> None:
    _, step = only_step(
        """
        import torch

        def train(model, loader, opt):
            for batch in loader:
                try:
                    loss = model(batch)
                except RuntimeError:
                    continue
                loss.backward()
                for p in model.parameters():
                    if p.grad is None:
                        continue  # leaves the inner loop only
                    torch.nn.utils.clip_grad_norm_([p], 1.0)
                opt.step()
                opt.zero_grad()
        """
    )
    skips = step.of_kind(K.SKIP)
    assert len(skips) == 1 and skips[0].guard.test is None  # the handler's continue; the inner one is no skip
    assert path_kinds(step) == {
        (K.SKIP,),
        (K.BACKWARD, K.OPT_STEP, K.ZERO_GRAD),
        (K.BACKWARD, K.CLIP, K.OPT_STEP, K.ZERO_GRAD),
    }


def test_gradient_accumulation_skip_is_not_a_check() -> None:
    _, step = only_step(
        """
        def train(model, loader, opt, scaler, accum):
            for i, x in enumerate(loader):
                scaler.scale(model(x) / accum).backward()
                if (i + 1) % accum != 0:
                    continue
                scaler.step(opt)
                scaler.update()
                opt.zero_grad()
        """
    )
    skip = step.of_kind(K.SKIP)[0]
    assert not skip.guard.checks_finiteness and not skip.guard.reads_grads


def test_a_flag_set_by_a_gradient_check_guards_a_skip() -> None:
    _, step = only_step(
        """
        import torch

        def train(model, loader, opt):
            for x in loader:
                model(x).backward()
                bad = False
                for p in model.parameters():
                    if torch.isnan(p.grad).any():
                        bad = True
                if bad:
                    opt.zero_grad()
                    continue
                opt.step()
                opt.zero_grad()
        """
    )
    guard = step.of_kind(K.SKIP)[0].guard
    assert guard.checks_finiteness and guard.reads_grads


def test_a_final_return_and_a_late_break_are_not_skips() -> None:
    _, steps = steps_of(
        """
        def step(model, loss, opt):
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss

        def train(model, loader, opt, max_steps):
            for i, x in enumerate(loader):
                model(x).backward()
                opt.step()
                opt.zero_grad()
                if i >= max_steps:
                    break
        """
    )
    assert [s.of_kind(K.SKIP) for s in steps] == [[], []]


def test_grad_reads_that_are_not_inspections() -> None:
    _, step = only_step(
        """
        import torch.distributed as dist

        def train(model, loader, opt, scaler, world):
            for x in loader:
                scaler.scale(model(x)).backward()
                for p in model.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad.div_(world)
                grads = [p.grad for p in model.parameters()]
                scaler.step(opt)
                scaler.update()
        """
    )
    assert K.GRAD_INSPECT not in kinds(step.events)


def test_schedulers_and_other_steps_are_not_optimizer_steps() -> None:
    _, step = only_step(
        """
        import torch

        def train(model, loader, optimizer, env, pbar):
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)
            for x in loader:
                model(x).backward()
                optimizer.step()
                scheduler.step()
                env.step(0)
                pbar.update(1)
        """
    )
    assert kinds(step.events) == [K.BACKWARD, K.OPT_STEP]


def test_framework_backwards_are_their_own_kind_and_unknown_wrappers_are_not_seen() -> None:
    _, steps = steps_of(
        """
        import lightning as L

        def train(model, loader, optimizer, accelerator, engine):
            for x in loader:
                accelerator.backward(model(x))
                optimizer.step()
                engine.backward(model(x))
                engine.step()
                out = model(x)
                out.backward(out)

        class Module(L.LightningModule):
            def training_step(self, batch, batch_idx):
                opt = self.optimizers()
                self.manual_backward(self(batch))
                opt.step()
        """
    )
    train, module = steps
    # Accelerate and Fabric may scale the loss themselves: neither a plain nor a scaled backward.
    assert kinds(train.events) == [K.FRAMEWORK_BACKWARD, K.OPT_STEP]
    assert [e.kind in BACKWARD_KINDS for e in train.events] == [True, False]
    assert kinds(module.events) == [K.FRAMEWORK_BACKWARD, K.OPT_STEP]


def test_clip_is_matched_to_the_optimizer_of_its_parameters() -> None:
    _, step = only_step(
        """
        import torch

        class GAN:
            def __init__(self):
                self.opt_d = torch.optim.Adam(self.netD.parameters())
                self.opt_g = torch.optim.Adam(self.netG.parameters())

            def step(self, loss):
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.netD.parameters(), 1.0)
                self.opt_d.step()
        """
    )
    assert step.of_kind(K.CLIP)[0].optimizer == "self.opt_d"


def test_a_fold_over_many_independent_branches_is_exact_and_merges_nothing() -> None:
    checks = "\n".join(f"    if flag{i}(x):\n        print(x.grad.norm())" for i in range(40))
    _, step = only_step(f"def train(model, x, opt):\n    model(x).backward()\n{checks}\n    opt.step()\n")
    inspections = step.of_kind(K.GRAD_INSPECT)
    assert len(inspections) == 40  # 2**40 paths: listing them is out of the question

    def count(seen: int, event) -> int:
        return seen + (event.kind is K.GRAD_INSPECT)

    fold = step.flow.fold(0, count)
    assert not fold.merged
    assert fold.before(inspections[-1]) == set(range(40))  # 0 to 39 inspections before the last
    assert {state for state, _ in fold.ends} == set(range(41))


def test_a_script_loop_at_module_level_is_a_step() -> None:
    ctx, _ = steps_of(
        """
        import torch

        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cuda")
        for x, y in batches:
            scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
        """
    )
    analysis = ctx.get(TrainingSteps)
    assert analysis.steps == []  # functions and methods only
    step = analysis.script_step
    assert step is not None and step.function is ctx.module and isinstance(step.loop, cst.For)
    assert kinds(step.events) == [K.SCALED_BACKWARD, K.SCALER_STEP, K.SCALER_UPDATE, K.ZERO_GRAD]
    assert step.scalers["scaler"].constructor == "torch.amp.GradScaler"
    assert step.optimizers["optimizer"].constructor == "torch.optim.SGD"
    assert analysis.all_steps() == [step]


def test_none_tests_are_flags_too() -> None:
    _, step = only_step(
        """
        def step(model, loss, opt, scaler=None):
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            if scaler is None:
                opt.step()
            else:
                scaler.step(opt)
                scaler.update()
        """
    )
    assert path_kinds(step) == {(K.SCALED_BACKWARD, K.SCALER_STEP, K.SCALER_UPDATE), (K.BACKWARD, K.OPT_STEP)}


def test_a_counter_reset_under_a_gradient_check_holds_no_gradients() -> None:
    _, step = only_step(
        """
        import torch

        def train(model, loader, opt, scaler, accum):
            count = 0
            for x in loader:
                scaler.scale(model(x)).backward()
                count += 1
                if count == accum:
                    scaler.unscale_(opt)
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    if not torch.isfinite(norm):
                        count = 0
                    scaler.step(opt)
                    scaler.update()
                    opt.zero_grad()
                    count = 0
        """
    )
    inspections = step.of_kind(K.GRAD_INSPECT)
    assert len(inspections) == 1  # `torch.isfinite(norm)`, not `count == accum`


def test_nan_tests_are_scale_invariant_inspections() -> None:
    _, step = only_step(
        """
        import torch

        def train(model, loader, opt, scaler, log):
            for x in loader:
                scaler.scale(model(x)).backward()
                if torch.isnan(next(model.parameters()).grad).any():
                    log("nan")
                log(max(p.grad.abs().max() for p in model.parameters()))
                scaler.step(opt)
                scaler.update()
        """
    )
    assert [e.scale_invariant for e in step.of_kind(K.GRAD_INSPECT)] == [True, False]


def test_opposite_comparisons_are_one_decision() -> None:
    _, step = only_step(
        """
        def step(model, loss, opt, scaler, precision, modes):
            if precision == "fp16":
                scaler.scale(loss).backward()
            elif "bf16" not in modes:
                loss.backward()
            if precision != "fp16":
                opt.step()
            else:
                scaler.step(opt)
                scaler.update()
        """
    )
    assert path_kinds(step) == {
        (K.SCALED_BACKWARD, K.SCALER_STEP, K.SCALER_UPDATE),
        (K.BACKWARD, K.OPT_STEP),
        (K.OPT_STEP,),
    }


def test_tests_that_call_are_not_matched() -> None:
    _, step = only_step(
        """
        def step(model, loss, opt, scaler, ready):
            if ready():
                scaler.scale(loss).backward()
            if not ready():
                opt.step()
        """
    )
    assert (K.SCALED_BACKWARD, K.OPT_STEP) in path_kinds(step)


def test_a_helper_flag_of_its_own_is_not_the_callers() -> None:
    _, step = only_step(
        """
        def _backward(loss, scaler):
            found = loss.isnan()
            if found:
                return
            scaler.scale(loss).backward()

        def train(model, loader, opt, scaler, found):
            for x in loader:
                _backward(model(x), scaler)
                if not found:
                    scaler.step(opt)
                    scaler.update()
        """
    )
    assert (K.SCALER_STEP, K.SCALER_UPDATE) in path_kinds(step)  # the helper's `found`, then the caller's


def test_autograd_backward_targets_the_loss() -> None:
    ctx, step = only_step(
        """
        import torch

        def train(model, x, opt):
            loss = model(x)
            torch.autograd.backward(tensors=loss)
            opt.step()
        """
    )
    (backward,) = step.of_kind(K.BACKWARD)
    assert ctx.code(backward.target) == "loss"


def test_replacing_or_deleting_grads_clears_them_but_rescaling_does_not() -> None:
    ctx, step = only_step(
        """
        import torch

        def train(model, loader, opt, world_size):
            for x in loader:
                model(x).backward()
                for p in model.parameters():
                    p.grad = p.grad / world_size
                opt.step()
                for p in model.parameters():
                    p.grad = torch.zeros_like(p)
                    del p.grad
        """
    )
    assert [ctx.code(e.node) for e in step.of_kind(K.ZERO_GRAD)] == ["p.grad", "p.grad"]


def test_optimizer_params_node_and_finiteness_of_inspections() -> None:
    ctx, step = only_step(
        """
        import math
        import torch

        def train(model, loader):
            opt = torch.optim.SGD(params=model.parameters(), lr=0.1)
            for x in loader:
                model(x).backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                print(norm.item())
                if not math.isfinite(norm.item()):
                    continue
                opt.step()
        """
    )
    info = step.optimizers["opt"]
    assert isinstance(info.params, cst.Call) and ctx.code(info.params) == info.params_code == "model.parameters()"
    assert [e.tests_finiteness for e in step.of_kind(K.GRAD_INSPECT)] == [False, True]
