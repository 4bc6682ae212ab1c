"""TL106: ``loss.backward()`` without scaling, while the step goes through ``scaler.step``.

The gradients were never multiplied by the loss scale, yet ``scaler.step`` divides them by it
(or, before the scaler has ever scaled anything, refuses to step at all: ``Attempted step but
_scale is None``). The fix backpropagates ``scaler.scale(loss)``.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL106"],
    "steps": 30,
    "why": "scaler.step on gradients the scaler never scaled",
    "effects": ["exception"],
    "shows_with": (
        "an enabled GradScaler: float16 autocast with an enabled GradScaler: a GPU (--device cuda), or "
        "CUDA autocast mapped to CPU float16 (--device cpu)"
    ),
    "original": [("exception", "contains", "_scale is None")],
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
        loss.backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
