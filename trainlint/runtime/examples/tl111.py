"""TL111: a GradScaler on a step whose autocast is bfloat16.

bfloat16 has float32's exponent range, so nothing underflows and the scaler has nothing to do: it
multiplies the loss by 65536, unscales every gradient again and checks them for inf on every step,
and never skips one. Removing it (the fix, unsafe) trains to the same loss.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL111"],
    "steps": 60,
    "unsafe_fixes": True,
    "why": "loss scaling does nothing for bfloat16",
    "effects": ["skips"],
    "shows_with": (
        "a scale grown large enough for the scaled bfloat16 gradients to overflow: it doubles every "
        "2000 clean steps, so only a long run (or a huge init_scale) makes the scaler skip a step for no reason"
    ),
    "original": [("skipped_fraction", "==", 0.0), ("loss_ratio", "<", 0.5)],
    "fixed": [
        ("skipped_fraction", "==", 0.0),
        ("loss_last", "<=", "1.05x original"),
        ("loss_last", ">=", "0.95x original"),
    ],
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
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(inputs), targets)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
