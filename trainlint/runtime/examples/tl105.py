"""TL105: ``scaler.step(optimizer)`` without ``scaler.update()``.

The scaler never resets its per-optimizer state, so the second ``scaler.step`` raises
``RuntimeError: step() has already been called since the last update()`` (and the scale could
never back off after an overflow). The fix calls ``scaler.update()`` after the step.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL105"],
    "steps": 30,
    "why": "the second scaler.step raises",
    "effects": ["exception", "scale_backoff"],
    "shows_with": (
        "an enabled GradScaler and a run that reaches the second step: float16 autocast with an enabled "
        "GradScaler: a GPU (--device cuda), or CUDA autocast mapped to CPU float16 (--device cpu)"
    ),
    "original": [("exception", "contains", "step() has already been called")],
    "fixed": [("exception", "is", None), ("steps_applied", ">=", 28), ("loss_fell", "is", True)],
}

STEPS = 30


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = torch.randn(256, 16, device=device)
    targets = (inputs[:, :4].sum(dim=1) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda")

    for step in range(STEPS):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(inputs), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
