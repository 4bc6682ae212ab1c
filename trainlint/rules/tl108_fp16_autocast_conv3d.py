"""TL108: float16 autocast around the forward pass of a model with 3-D convolutions."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from trainlint.analysis.imports import dotted_name
from trainlint.analysis.model_structure import CONV3D, ModelStructure, contains
from trainlint.analysis.regions import Autocast, Regions
from trainlint.context import FileContext
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule


class Fp16AutocastConv3d(Rule):
    """## What it does
    Finds `autocast` in float16 (an explicit `dtype=torch.float16`, or the CUDA default of
    `torch.autocast("cuda")`, `torch.amp.autocast("cuda")` and `torch.cuda.amp.autocast()`)
    around the forward pass of a model that contains `nn.Conv3d` or `F.conv3d`. The model is
    followed to what built it (`model = build_model(cfg)`, `self.model = model`, `DDP(model)`)
    and its layers are looked up across the project: the class may live in another module, be
    built by a factory or nested in submodules. bfloat16 autocast and CPU autocast (bfloat16 by
    default) are not reported.

    It is reported only when every model the region may run contains a 3-D convolution: a model
    that is one of several classes, or unknown on some path, keeps the rule quiet.

    ## Why is this bad?
    float16 keeps 5 exponent bits: its largest value is 65504 and its resolution near 1 is
    2**-10. Under autocast a convolution runs in float16 and each output is a sum of
    `in_channels * kernel volume` products: a 3x3x3 Conv3d over 256 channels sums 6912 products
    per output, three times the 2304 of a 3x3 Conv2d, so activations and their gradients reach
    65504 much sooner and become `inf`, then `NaN` after a normalization. GradScaler cannot help:
    it rescales gradients, not forward activations. bfloat16 has float32's exponent range (max
    about 3.4e38) with 8 bits of mantissa, so the same sums cannot overflow, and it needs no
    GradScaler.

    The fix sets `dtype=torch.bfloat16` and keeps the rest of the call. It is unsafe: bfloat16
    needs hardware support (Ampere or newer GPUs) and rounds more coarsely than float16.

    ## Fix safety
    Unsafe: bfloat16 has float32's range, so the overflow goes away, but 8 bits of mantissa where
    float16 has 11: every operation under autocast rounds differently, so the model's outputs and
    what it learns change, and bfloat16 needs hardware that supports it (on CUDA, Ampere or newer).
    """

    code = "TL108"
    name = "fp16-autocast-conv3d"
    summary = "float16 autocast around a model with 3-D convolutions (overflows 65504)"
    level = "warning"
    fix_applicability = "unsafe"
    triggers = ("autocast",)
    examples = (
        Example(
            code='''
            import torch
            from models import build_model


            def train(cfg, loader, optimizer, scaler):
                model = build_model(cfg).cuda()
                for clips, labels in loader:
                    with torch.autocast("cuda"):
                        loss = torch.nn.functional.cross_entropy(model(clips), labels)
                    optimizer.zero_grad()
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
            ''',
            files={
                "models/__init__.py": "from .video import build_model\n",
                "models/video.py": '''import torch.nn as nn


class Stem(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv3d(3, width, kernel_size=3, padding=1)


class VideoNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.stem = Stem(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.classes)


def build_model(cfg):
    return VideoNet(cfg)
''',
            },
            expect=[(8, 14)],
            fixed='''
            import torch
            from models import build_model


            def train(cfg, loader, optimizer, scaler):
                model = build_model(cfg).cuda()
                for clips, labels in loader:
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        loss = torch.nn.functional.cross_entropy(model(clips), labels)
                    optimizer.zero_grad()
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
            ''',
            unsafe=True,
        ),
        Example(
            code='''
            import torch
            import torch.nn as nn
            from torch.cuda.amp import autocast


            class Video3D(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = nn.Conv3d(3, 64, 3)

                def forward(self, x):
                    return self.conv(x).mean((2, 3, 4))


            model = Video3D().cuda()
            with autocast(enabled=True):
                out = model(torch.randn(2, 3, 8, 64, 64, device="cuda"))
            ''',
            expect=[(16, 6)],
            fixed='''
            import torch
            import torch.nn as nn
            from torch.cuda.amp import autocast


            class Video3D(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = nn.Conv3d(3, 64, 3)

                def forward(self, x):
                    return self.conv(x).mean((2, 3, 4))


            model = Video3D().cuda()
            with autocast(enabled=True, dtype=torch.bfloat16):
                out = model(torch.randn(2, 3, 8, 64, 64, device="cuda"))
            ''',
            unsafe=True,
        ),
    )
    valid_examples = (
        '''
        import torch
        import torch.nn as nn

        class Video3D(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv3d(3, 64, 3)

        model = Video3D().cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
        ''',
        '''
        import torch
        import torch.nn as nn

        class Image2D(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 64, 3)

        model = Image2D().cuda()
        with torch.autocast("cuda"):
            out = model(x)
        ''',
        '''
        import torch
        import torch.nn as nn

        class Video3D(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv3d(3, 64, 3)

        model = Video3D()
        with torch.autocast("cpu"):
            out = model(x)
        ''',
    )

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        structure = ctx.get(ModelStructure)
        for autocast, region in ctx.get(Regions).float16_regions:
            if autocast.certainty != "always":
                continue  # float16 on some settings only (`dtype=cfg.amp_dtype`): not sure enough
            culprit = self._conv3d_run(ctx, structure, region)
            if culprit is None:
                continue
            yield ctx.report(
                self,
                autocast.call,
                f"float16 autocast runs {culprit}, which contains a 3-D convolution: its sums over "
                "in_channels x kernel volume overflow float16's max 65504; use dtype=torch.bfloat16 "
                "(float32's range)",
                fix=self._fix(ctx, autocast),
            )

    # -- what runs inside ----------------------------------------------------------------------
    @staticmethod
    def _conv3d_run(ctx: FileContext, structure: ModelStructure, region: cst.CSTNode) -> str | None:
        """The model with a 3-D convolution run in the region, as the message names it."""
        for run in structure.runs_in(region):
            if contains(run.common_layers, CONV3D):  # every model it may be has a Conv3d
                builders = sorted(name.rpartition(".")[2] for name in run.built_by)
                built = f" (built by `{builders[0]}`)" if builders and builders[0] != ctx.code(run.model) else ""
                return f"`{ctx.code(run.model)}`{built}"
        for call in ctx.nodes.calls_spelled_any(_conv3d_spellings(ctx)):
            if ctx.qualified_name(call.func) in CONV3D and _inside(ctx, call, region):
                return f"`{ctx.code(call.func)}`"
        return None

    # -- the fix -------------------------------------------------------------------------------
    @staticmethod
    def _fix(ctx: FileContext, autocast: Autocast) -> Fix | None:
        if autocast.dtype is not None:
            written = dotted_name(autocast.dtype)
            if written is not None and "." in written:  # keep the spelling: `th.half` -> `th.bfloat16`
                bfloat16 = written.rpartition(".")[0] + ".bfloat16"
            else:
                torch_name = _torch_name(ctx)
                if torch_name is None:
                    return None
                bfloat16 = f"{torch_name}.bfloat16"
            return ctx.fix([ctx.replace(autocast.dtype, bfloat16)], "unsafe", "Use `dtype=torch.bfloat16`")
        torch_name = _torch_name(ctx)
        if torch_name is None:
            return None
        new_call = _with_keyword(autocast.call, "dtype", f"{torch_name}.bfloat16")
        return ctx.fix(
            [ctx.replace(autocast.call, new_call.with_changes(lpar=(), rpar=()))],
            "unsafe",
            "Add `dtype=torch.bfloat16`",
        )


def _conv3d_spellings(ctx: FileContext) -> set[str]:
    """The names a 3-D convolution call can be written with here: ``Conv3d``, ``conv3d``, and the
    aliases this file imports them as."""
    names = {name.rpartition(".")[2] for name in CONV3D}
    for alias in ctx.nodes.of(cst.ImportAlias):
        imported = alias.name.value if isinstance(alias.name, cst.Name) else alias.name.attr.value
        if imported in names and alias.asname is not None and isinstance(alias.asname.name, cst.Name):
            names.add(alias.asname.name.value)
    return names


def _inside(ctx: FileContext, node: cst.CSTNode, region: cst.CSTNode) -> bool:
    return any(ancestor is region for ancestor in ctx.ancestors(node))


def _torch_name(ctx: FileContext) -> str | None:
    """The name ``torch`` is bound to in this file (``torch``, ``th``), if any."""
    names = [local for local, qualified in ctx.imports.bindings.items() if qualified == "torch"]
    if "torch" in names:
        return "torch"
    return names[0] if names else None


def _with_keyword(call: cst.Call, keyword: str, value: str) -> cst.Call:
    """``call`` with ``keyword=value`` appended, following the call's own argument layout."""
    new_arg = cst.Arg(
        keyword=cst.Name(keyword),
        value=cst.parse_expression(value),
        equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")),
    )
    args = list(call.args)
    if not args:
        return call.with_changes(args=[new_arg])
    last = args[-1]
    if isinstance(last.comma, cst.Comma):  # a trailing comma: the new argument goes on its own line
        separator = args[-2].comma if len(args) > 1 and isinstance(args[-2].comma, cst.Comma) else last.comma
        args[-1] = last.with_changes(comma=separator)
        args.append(new_arg.with_changes(comma=last.comma))
    else:
        args[-1] = last.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        args.append(new_arg)
    return call.with_changes(args=args)
