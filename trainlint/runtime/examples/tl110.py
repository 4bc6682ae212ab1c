"""TL110: a gradient hook that clamps gradients the GradScaler has scaled.

Each parameter clamps its gradient to [-1, 1] in a hook, "gradient clipping during backward". The
hook runs in the scaled backward: the gradients it sees are 65536x their true size, nearly all of
them are cut to +-1, and after ``unscale_`` every gradient is at most 1/65536 = 1.5e-5. The model
does not learn. The change the finding asks for (made by hand: the rule has no automatic fix):
no hook, ``clip_grad_norm_`` after ``scaler.unscale_``.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL110"],
    "steps": 60,
    "why": "a clamp in a gradient hook acts on gradients 65536x their true size",
    "by_hand": [
        ("    for p in model.parameters():\n        p.register_hook(lambda grad: grad.clamp(-1.0, 1.0))\n", ""),
        (
            "        scaler.step(optimizer)\n",
            "        scaler.unscale_(optimizer)\n"
            "        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)\n"
            "        scaler.step(optimizer)\n",
        ),
    ],
    "original": [("grad_norm_median", "<", 1e-3), ("loss_ratio", ">", 0.9)],
    "fixed": [("grad_norm_median", ">", "100x original"), ("loss_ratio", "<", 0.5)],
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
    for p in model.parameters():
        p.register_hook(lambda grad: grad.clamp(-1.0, 1.0))

    for step in range(STEPS):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(inputs), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
