"""TL109: a step skipped after ``scaler.unscale_`` without ``scaler.update()``.

With a high initial loss scale the first steps overflow, which is how GradScaler finds its scale:
it skips the step and halves the scale in ``update()``. Skipping with ``continue`` before
``update()`` leaves the optimizer marked as unscaled, and the next ``unscale_`` raises
``RuntimeError: unscale_() has already been called on this optimizer since the last update()``.
The fix calls ``scaler.update()`` before skipping.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL109"],
    "steps": 60,
    "why": "skipping before update() never backs the scale off",
    "effects": ["exception", "steps_applied", "scale_backoff"],
    "shows_with": (
        "a step the script skips itself (NaN/Inf gradients): float16 autocast with an enabled GradScaler:"
        " a GPU (--device cuda), or CUDA autocast mapped to CPU float16 (--device cpu), and more steps"
    ),
    "original": [("exception", "contains", "unscale_() has already been called")],
    "fixed": [("exception", "is", None), ("applied_fraction", ">=", 0.7), ("loss_fell", "is", True)],
}

STEPS = 60


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = torch.randn(256, 16, device=device)
    targets = (inputs[:, :4].sum(dim=1) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**24)

    for step in range(STEPS):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(inputs), targets)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        if not torch.isfinite(grad_norm):
            optimizer.zero_grad(set_to_none=True)
            continue
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
