"""TL102 across iterations: gradient accumulation that unscales every micro-batch.

The loop accumulates four micro-batches per optimizer step, but calls ``scaler.unscale_`` (and
clips) on every micro-batch while ``scaler.step`` and ``scaler.update`` run only on the fourth.
The second micro-batch unscales again before any ``update()`` and raises ``RuntimeError:
unscale_() has already been called on this optimizer since the last update()``. The fix moves
the ``unscale_`` and the clip under the same condition as the step and the update.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL102"],
    "steps": 80,
    "why": "the second micro-batch unscales again before any update()",
    "effects": ["exception"],
    "shows_with": "gradient accumulation over more than one micro-batch",
    "original": [("exception", "contains", "unscale_() has already been called")],
    "fixed": [("exception", "is", None), ("steps_applied", ">=", 18), ("loss_fell", "is", True)],
}

STEPS = 80
ACCUMULATION = 4


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = torch.randn(512, 16, device=device)
    targets = (inputs[:, :4].sum(dim=1) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    scaler = torch.amp.GradScaler("cuda")

    for i in range(STEPS):
        batch = slice((i * 64) % 512, (i * 64) % 512 + 64)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(inputs[batch]), targets[batch]) / ACCUMULATION
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        if (i + 1) % ACCUMULATION == 0:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
