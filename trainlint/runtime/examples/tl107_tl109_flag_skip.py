"""TL107 + TL109 on a skip written as a flag.

A float16 loop with a high initial loss scale (2**24) computes the gradient norm after
``unscale_``, sets ``skip_update`` when it is not finite and steps only ``if not skip_update``.
The first step overflows, as a high initial scale is meant to: the flag skips ``scaler.step``,
``scaler.update`` and ``zero_grad`` together, so the next ``unscale_`` raises ``RuntimeError``
(no update since the last one) with infinite gradients still in ``.grad``. Fixed: the branch that
skips updates the scaler (TL109) and clears the gradients (TL107), the scale backs off and
training proceeds.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL107", "TL109"],
    "steps": 120,
    "why": "a skip flag set on a non-finite norm leaves the scaler without update() and the gradients uncleared",
    "effects": ["exception"],
    "shows_with": "a first overflow, which a high initial loss scale always brings",
    "original": [("exception", "contains", "unscale_() has already been called")],
    "fixed": [("exception", "is", None), ("applied_fraction", ">=", 0.8), ("loss_ratio", "<", 0.2)],
}

STEPS = 120


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = torch.randn(512, 16, device=device)
    targets = inputs[:, :6].argmax(dim=1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 6)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**24)

    for step in range(STEPS):
        batch = slice((step * 128) % 512, (step * 128) % 512 + 128)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(inputs[batch]), targets[batch])
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        skip_update = not torch.isfinite(grad_norm)
        if not skip_update:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()


if __name__ == "__main__":
    main()
