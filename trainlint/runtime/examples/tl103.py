"""TL103: gradients clipped while still scaled by the GradScaler.

``clip_grad_norm_(..., max_norm=1.0)`` runs before ``scaler.unscale_``: it clips the scaled
gradients (65536x the real ones) to norm 1, and ``scaler.step`` then divides by the scale, so the
optimizer applies gradients of norm 1/65536. Plain SGD shows it (Adam's scale invariance would
hide it): the model barely moves. The fix unscales before clipping.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL103"],
    "steps": 60,
    "why": "clipping scaled gradients shrinks the update 65536x",
    "effects": ["grad_norm_larger"],
    "shows_with": (
        "an enabled GradScaler, whose scale shrinks the clipped gradients: float16 autocast with an "
        "enabled GradScaler: a GPU (--device cuda), or CUDA autocast mapped to CPU float16 (--device cpu)"
    ),
    "original": [("grad_norm_median", "<", 1e-3), ("loss_ratio", ">", 0.9)],
    "fixed": [("grad_norm_median", ">", "100x original"), ("loss_ratio", "<", 0.7)],
}

STEPS = 60


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = torch.randn(256, 16, device=device)
    targets = (inputs[:, :4].sum(dim=1) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cuda")

    for step in range(STEPS):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(inputs), targets)
        scaler.scale(loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
