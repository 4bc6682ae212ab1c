"""Where a method is called, in a project that spells its name everywhere (the shape of diffusers).

A pipeline's ``encode_prompt`` puts the text encoder in eval mode and runs it; the pipeline's
``__call__``, under ``@torch.no_grad()``, is its only caller. Thirteen community pipelines define
their own ``encode_prompt`` and call it through ``self``: those are calls of other methods, and the
search for the callers must not give up on them (past a dozen modules the engine stops reading, and
the method would look called from anywhere). A module that builds the pipeline and calls its
``encode_prompt`` with gradients on is a caller, and keeps the finding; so are modules that reach
an instance through another class that holds it, or through a helper it is passed to.
"""

from __future__ import annotations

import json
from pathlib import Path

import libcst as cst

from tests.conftest import run_cli
from trainlint.analysis.values import ValueFlow
from trainlint.context import FileContext
from trainlint.project import ProjectIndex, module_name_for
from trainlint.source import SourceText

PIPELINE_UTILS = '''\
import torch


class DiffusionPipeline:
    """What every pipeline shares: moving its components to a device."""

    def to(self, device):
        for component in vars(self).values():
            if isinstance(component, torch.nn.Module):
                component.to(device)
        return self
'''

AUDIO_PIPELINE = '''\
import torch
from torch import nn

from .pipeline_utils import DiffusionPipeline


class AudioPipeline(DiffusionPipeline):
    def __init__(self, text_encoder: nn.Module, transformer: nn.Module):
        self.text_encoder = text_encoder
        self.transformer = transformer

    def encode_prompt(self, input_ids, attention_mask):
        self.text_encoder.eval()
        prompt_embeds = self.text_encoder(input_ids, attention_mask=attention_mask)
        return prompt_embeds[0]

    @torch.no_grad()
    def __call__(self, input_ids, attention_mask, num_inference_steps=50):
        prompt_embeds = self.encode_prompt(input_ids, attention_mask)
        latents = torch.randn(input_ids.shape[0], 64, 1024)
        for _ in range(num_inference_steps):
            latents = latents - self.transformer(latents, prompt_embeds)
        return latents
'''

COMMUNITY_PIPELINE = '''\
import torch

from pipes.pipeline_utils import DiffusionPipeline


class {name}Pipeline(DiffusionPipeline):
    def __init__(self, text_encoder, unet):
        self.text_encoder = text_encoder
        self.unet = unet

    def encode_prompt(self, input_ids):
        return self.text_encoder(input_ids)[0]

    def __call__(self, input_ids):
        return self.unet(torch.randn(1, 4, 64, 64), self.encode_prompt(input_ids))
'''

# A script that precomputes prompt embeddings with the audio pipeline, gradients on.
COMPUTE_EMBEDDINGS = '''\
import torch
from torch import nn

from pipes.pipeline_audio import AudioPipeline


def compute_embeddings(prompts):
    pipe = AudioPipeline(nn.TransformerEncoderLayer(768, 12), nn.Linear(1024, 1024))
    embeddings = []
    for input_ids, attention_mask in prompts:
        embeddings.append(pipe.encode_prompt(input_ids, attention_mask))
    torch.save(embeddings, "embeddings.pt")
'''

COMMUNITY = ["Lpw", "Canvas", "Inversion", "Gluegen", "Painter", "Instaflow", "FaceId", "Interpolate", "Grounded",
             "Masked", "Matryoshka", "Regional", "Tiled"]


def _project(root: Path, *, no_grad: bool = True, extra: dict[str, str] | None = None) -> Path:
    files = {
        "pipes/__init__.py": "",
        "pipes/pipeline_utils.py": PIPELINE_UTILS,
        "pipes/pipeline_audio.py": AUDIO_PIPELINE if no_grad else AUDIO_PIPELINE.replace("    @torch.no_grad()\n", ""),
        **{f"community/{name.lower()}.py": COMMUNITY_PIPELINE.format(name=name) for name in COMMUNITY},
        **(extra or {}),
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def _tl406(project: Path) -> list[tuple[str, int, int]]:
    result = run_cli(".", "--select", "TL406", "--no-cache", "--output-format", "json", cwd=project)
    assert result.returncode in (0, 1), result.stderr
    return sorted(
        (Path(f["filename"]).resolve().relative_to(project.resolve()).as_posix(), f["location"]["row"], f["location"]["column"])
        for f in json.loads(result.stdout)
    )


def test_a_method_called_only_under_no_grad_through_self_is_not_reported(tmp_path: Path) -> None:
    assert _tl406(_project(tmp_path)) == []


def test_the_same_method_is_reported_when_its_caller_keeps_gradients(tmp_path: Path) -> None:
    assert _tl406(_project(tmp_path, no_grad=False)) == [("pipes/pipeline_audio.py", 14, 25)]


def test_a_caller_in_a_module_that_builds_the_pipeline_still_counts(tmp_path: Path) -> None:
    project = _project(tmp_path, extra={"compute_embeddings.py": COMPUTE_EMBEDDINGS})
    assert _tl406(project) == [("pipes/pipeline_audio.py", 14, 25)]


def _call_sites(project: Path, module: str, method: str) -> tuple[list[tuple[str, int]], bool]:
    path = project / module
    text = path.read_text(encoding="utf-8")
    ctx = FileContext(module, SourceText(text), cst.parse_module(text), ProjectIndex([project]), module_name_for(path)[0], path)
    ctx.project.register(ctx)
    function = next(f for f in ctx.nodes.of(cst.FunctionDef) if f.name.value == method)
    sites, complete = ctx.get(ValueFlow).call_sites(function)
    return sorted((Path(s.flow.ctx.path).name, s.flow.ctx.range(s.call).start.line) for s in sites), complete


def test_call_sites_of_the_method_are_its_own_class_calls(tmp_path: Path) -> None:
    """The engine's answer: the one ``self.encode_prompt(...)`` of ``__call__``, and a complete list."""
    project = _project(tmp_path)
    assert _call_sites(project, "pipes/pipeline_audio.py", "encode_prompt") == ([("pipeline_audio.py", 19)], True)


def test_an_instance_held_by_another_class_or_passed_to_a_helper_is_still_followed(tmp_path: Path) -> None:
    """Modules that never name the class reach its instances: ``metrics.tracker.update(loss)`` of a
    tracker a ``Metrics`` builds, and ``encode(model)`` in a helper module the training script
    passes the model to. Thirteen unrelated modules of the package calling their own ``update``
    are skipped, and the answer stays complete."""
    files = {
        "pkg/__init__.py": "",
        "pkg/utils.py": "def log(message):\n    print(message)\n",
        "pkg/metrics.py": (
            "class LossTracker:\n"
            "    def __init__(self):\n"
            "        self.total = 0.0\n\n"
            "    def update(self, loss):\n"
            "        self.total += loss\n\n\n"
            "class Metrics:\n"
            "    def __init__(self):\n"
            "        self.tracker = LossTracker()\n"
        ),
        "pkg/model.py": "class Wrapper:\n    def val_start(self):\n        self.training = False\n",
        "pkg/evaluation.py": (
            "from pkg.utils import log\n\n\n"
            "def encode(model, loader):\n"
            "    model.val_start()\n"
            "    log('encoding')\n"
            "    return [x for x in loader]\n"
        ),
        "pkg/train.py": (
            "from pkg.evaluation import encode\n"
            "from pkg.metrics import Metrics\n"
            "from pkg.model import Wrapper\n\n\n"
            "def main(loader):\n"
            "    metrics = Metrics()\n"
            "    model = Wrapper()\n"
            "    for loss in loader:\n"
            "        metrics.tracker.update(loss)\n"
            "    encode(model, loader)\n"
        ),
        **{
            f"pkg/meter_{n}.py": f"from pkg.utils import log\n\n\nclass Meter{n}:\n    def update(self, value):\n"
            f"        log(value)\n\n    def step(self, value):\n        self.update(value)\n        self.val_start()\n"
            for n in range(13)
        },
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert _call_sites(tmp_path, "pkg/metrics.py", "update") == ([("train.py", 10)], True)
    assert _call_sites(tmp_path, "pkg/model.py", "val_start") == ([("evaluation.py", 5)], True)
