"""TL101: gradients inspected while still scaled by the GradScaler.

A norm guard runs between ``scaler.scale(loss).backward()`` and ``scaler.unscale_(optimizer)``,
so it compares gradients multiplied by the loss scale (65536) with a threshold meant for real
gradients: every step looks like an explosion and is skipped. The fix unscales right after
backward, so the guard sees real gradients.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL101"],
    "steps": 60,
    "why": "a norm guard on scaled gradients skips every step",
    "effects": ["steps_applied"],
    "shows_with": (
        "gradients large enough, once scaled, to trip the guard: float16 autocast with an enabled "
        "GradScaler: a GPU (--device cuda), or CUDA autocast mapped to CPU float16 (--device cpu)"
    ),
    "original": [("steps_applied", "==", 0), ("iterations", ">=", 60)],
    "fixed": [("applied_fraction", ">=", 0.9), ("loss_fell", "is", True)],
}

STEPS = 60
MAX_GRAD_NORM = 100.0  # a generous guard against exploding gradients


def make_data(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.randn(512, 16, device=device)
    targets = (inputs[:, :4].sum(dim=1) > 0).long()
    return inputs, targets


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs, targets = make_data(device)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda")

    for step in range(STEPS):
        batch = slice((step * 64) % 512, (step * 64) % 512 + 64)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(inputs[batch]), targets[batch])
        scaler.scale(loss).backward()
        grad_norm = torch.stack([p.grad.norm() for p in model.parameters()]).norm()
        if grad_norm > MAX_GRAD_NORM:
            optimizer.zero_grad(set_to_none=True)
            continue
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
