"""TL101 + TL107 + TL109: three fixes that only work together.

A float16 loop with a high initial loss scale (2**24) checks the gradients for NaN/Inf while they
are still scaled and skips the step when it finds one, without zeroing the gradients and without
``scaler.update()``. The first steps overflow, as a high initial scale is meant to; but the scale
never backs off (no update), the bad gradients are never cleared, so no step is ever applied.
Fixed: unscale right after backward (TL101), zero the gradients (TL107) and update the scaler
(TL109) before skipping: the scale backs off within a dozen steps and training proceeds.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL101", "TL107", "TL109"],
    "steps": 120,
    "why": "a NaN check on scaled gradients with a high initial scale never applies a step",
    "original": [("steps_applied", "==", 0), ("iterations", ">=", 120)],
    "fixed": [("applied_fraction", ">=", 0.8), ("loss_ratio", "<", 0.2)],
}

STEPS = 120


def make_data(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.randn(512, 16, device=device)
    targets = inputs[:, :6].argmax(dim=1)
    return inputs, targets


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs, targets = make_data(device)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 6)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**24)

    for step in range(STEPS):
        batch = slice((step * 128) % 512, (step * 128) % 512 + 128)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(inputs[batch]), targets[batch])
        scaler.scale(loss).backward()
        if any(not torch.isfinite(p.grad).all() for p in model.parameters()):
            continue
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()


if __name__ == "__main__":
    main()
