"""TL104: ``optimizer.step()`` called directly after a scaled backward.

The optimizer applies gradients still multiplied by the loss scale (65536): with plain SGD the
first step throws the weights far away and the loss explodes (Adam's scale invariance would hide
it). The fix steps through ``scaler.step(optimizer)`` and ``scaler.update()``.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL104"],
    "steps": 40,
    "why": "the optimizer applies gradients 65536x too large",
    "effects": ["grad_norm_smaller"],
    "shows_with": (
        "an enabled GradScaler, whose scale the optimizer applies: float16 autocast with an enabled "
        "GradScaler: a GPU (--device cuda), or CUDA autocast mapped to CPU float16 (--device cpu)"
    ),
    "original": [("grad_norm_max", ">", 1e3), ("loss_fell", "is", False)],
    "fixed": [("grad_norm_max", "<", 1e2), ("healthy", "is", True)],
}

STEPS = 40


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
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
