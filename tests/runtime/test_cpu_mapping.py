"""CUDA mixed precision mapped to its CPU float16 equivalents, and said so."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

from trainlint.runtime.cpu_mapping import (  # noqa: E402
    BFLOAT16_DIFFERENCE_NOTE,
    DEVICE_DIFFERENCE_NOTE,
    FLOAT16_DIFFERENCE_NOTE,
    CudaOnCpu,
)


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


@pytest.mark.parametrize(
    ("code", "uses_cuda"),
    [
        ("model.cuda()", True),
        ("x = torch.zeros(2, device='cuda:0')", True),
        ("parser.add_argument('--device', default='cuda')", True),
        ("t = torch.cuda.FloatTensor(3)", True),
        ("batch = batch.pin_memory()", True),
        ("loader = DataLoader(data, pin_memory=True)", False),  # patched without the mode
        ("device = 'cuda' if torch.cuda.is_available() else 'cpu'", False),
        ("if torch.cuda.is_available():\n    model.cuda()", False),
        ("if not torch.cuda.is_available():\n    pass\nelse:\n    model.cuda()", False),
        ("if not torch.cuda.is_available():\n    model.cuda()", True),
        ("with torch.autocast('cuda', dtype=torch.float16):\n    pass", False),
        ("scaler = torch.amp.GradScaler('cuda')", False),
        ("use_amp = x.device.type == 'cuda'", False),
        ("print('cuda is great')", False),
        ("def broken(:", True),  # cannot tell: map
    ],
)
def test_the_device_mapping_is_needed_only_where_code_may_place_tensors_on_cuda(code, uses_cuda):
    from trainlint.runtime.cpu_mapping import uses_cuda_devices

    assert uses_cuda_devices(code, cuda_available=False) is uses_cuda
    if "is_available" in code:  # on a GPU machine run with --device cpu, that branch is taken
        assert uses_cuda_devices(code, cuda_available=True)


TRAIN = """\
import torch
import torch.nn.functional as F
torch.manual_seed(0)
model = torch.nn.Linear(4, 1){to_device}
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
print("torch function modes:", torch._C._len_torch_function_stack())
{body}
for step in range(3):
    with torch.autocast({autocast}):
        loss = F.mse_loss(model(torch.randn(8, 4){to_device}).float(), torch.zeros(8, 1){to_device})
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""


def write_script(tmp_path, to_device: str = "", body: str = "", autocast: str = "'cpu', enabled=False"):
    script = tmp_path / "train.py"
    script.write_text(TRAIN.format(to_device=to_device, body=body, autocast=autocast))
    return script


def test_a_script_that_never_names_cuda_runs_without_the_torch_function_mode(tmp_path, capsys):
    from trainlint.runtime.smoke import run_script

    run = run_script(write_script(tmp_path), steps=3, device="cpu")
    assert "torch function modes: 0" in capsys.readouterr().out
    assert run.report.healthy and run.record.notes == []


def test_pinned_memory_is_mapped_and_warnings_point_at_the_user_s_line(tmp_path, capsys):
    from trainlint.runtime.smoke import run_script

    body = (
        "batch = torch.randn(8, 4).pin_memory().cuda(non_blocking=True)\n"
        "buffer = torch.empty(8, pin_memory=True)\n"
        "loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(batch), batch_size=4, pin_memory=True)\n"
        "first = next(iter(loader))\n"
        "grad = (model.weight * 2).grad  # a non-leaf's .grad: torch warns from C++\n"
    )
    script = write_script(tmp_path, to_device=".cuda()", body=body)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = run_script(script, steps=3, device="cpu")
    assert "torch function modes: 1" in capsys.readouterr().out
    assert run.record.exception is None and len(run.record.steps) == 3
    assert run.record.notes[0] == (
        'cpu mapping: .cuda() and device "cuda" ran on the CPU; pinned memory was left unpinned'
    )
    assert run.record.notes[1:] == [DEVICE_DIFFERENCE_NOTE]  # no float16 in this run: no float16 note
    non_leaf = [w for w in caught if ".grad attribute of a Tensor that is not a leaf" in str(w.message)]
    assert [(w.filename, w.lineno) for w in non_leaf] == [(str(script), 11)]  # not cpu_mapping.py


@pytest.mark.parametrize(
    ("autocast", "notes"),
    [
        ("'cuda', dtype=torch.bfloat16", ['torch.autocast("cuda", bfloat16) ran as', BFLOAT16_DIFFERENCE_NOTE]),
        ("'cuda', dtype=torch.float16", ['torch.autocast("cuda", float16) ran as', FLOAT16_DIFFERENCE_NOTE]),
        ("'cuda', enabled=False", []),  # asked for, and off: nothing ran in float16
    ],
)
def test_notes_say_what_this_run_did(tmp_path, autocast, notes):
    from trainlint.runtime.smoke import run_script

    run = run_script(write_script(tmp_path, autocast=autocast), steps=3, device="cpu")
    assert len(run.record.notes) == len(notes)
    for note, expected in zip(run.record.notes, notes):
        assert expected in note
