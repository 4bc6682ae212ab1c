"""CUDA mixed precision mapped to its CPU float16 equivalents, and said so."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

from trainlint.runtime.cpu_mapping import CudaOnCpu  # noqa: E402


def test_cuda_autocast_and_gradscaler_run_in_cpu_float16_without_warnings():
    model = torch.nn.Linear(8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unmapped, both warn that CUDA is unavailable
        warnings.simplefilter("ignore", FutureWarning)  # torch.cuda.amp.GradScaler is deprecated
        with CudaOnCpu() as mapping:
            scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
            legacy = torch.cuda.amp.GradScaler()
            with torch.autocast("cuda"):
                out = model(torch.randn(2, 8))
    assert out.dtype == torch.float16  # CUDA's default autocast dtype, not the CPU's bfloat16
    assert scaler.is_enabled() and scaler.scale(torch.tensor(1.0)).item() == 1024.0
    assert legacy.is_enabled()
    assert mapping.notes()[0].startswith(
        'cpu mapping: torch.autocast("cuda", float16) ran as torch.autocast("cpu", float16)'
    )
    assert "results may differ on a GPU" in mapping.notes()[1]


def test_cuda_devices_land_on_the_cpu():
    with CudaOnCpu() as mapping:
        tensors = [
            torch.zeros(2).cuda(),
            torch.zeros(2).to("cuda"),
            torch.zeros(2, device="cuda:0"),
            torch.ones(2).to(device=torch.device("cuda"), dtype=torch.float16),
        ]
        module = torch.nn.Linear(2, 2).cuda()
        torch.cuda.synchronize()
    assert all(t.device.type == "cpu" for t in tensors) and module.weight.device.type == "cpu"
    assert tensors[3].dtype == torch.float16
    assert '.cuda() and device "cuda" ran on the CPU' in mapping.notes()[0]


def test_everything_is_restored_afterwards():
    init = torch.amp.GradScaler.__init__
    with CudaOnCpu():
        pass
    assert torch.amp.GradScaler.__init__ is init
    if not torch.cuda.is_available():
        with pytest.raises((AssertionError, RuntimeError)):
            torch.zeros(1).cuda()  # no CUDA here, and no mapping any more
    assert CudaOnCpu().notes() == []
