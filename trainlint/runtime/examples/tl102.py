"""TL102: ``scaler.unscale_(optimizer)`` twice before ``scaler.update()``.

The second call raises ``RuntimeError: unscale_() has already been called on this optimizer
since the last update()`` on the first step. The fix removes the later call.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL102"],
    "steps": 30,
    "why": "the second unscale_ raises on the first step",
    "effects": ["exception"],
    "shows_with": "a run that reaches the second unscale_() of one step",
    "original": [("exception", "contains", "unscale_() has already been called")],
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
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
