"""TL204: ``binary_cross_entropy`` on a sigmoid output instead of the logits.

For a confidently wrong model (logits around -120) sigmoid is exactly 0; binary_cross_entropy
clamps the log at -100, so the loss looks finite, but the gradient through the saturated sigmoid
is exactly 0: those samples never learn and the loss does not move.
``binary_cross_entropy_with_logits`` keeps the gradient (sigmoid(z) - y). The fix rewrites to it.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL204"],
    "steps": 40,
    "why": "a saturated sigmoid passes no gradient to binary_cross_entropy",
    "effects": ["loss_falls"],
    "shows_with": "saturated sigmoid outputs: more steps (--steps 200)",
    "original": [("loss_ratio", ">", 0.95)],
    "fixed": [("loss_ratio", "<", 0.5)],
}

STEPS = 40


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = torch.randn(256, 16, device=device)
    labels = (inputs[:, 0] > 0).float()
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).to(device)
    with torch.no_grad():
        model[2].bias.fill_(-120.0)  # confidently "0" for every input
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    for step in range(STEPS):
        loss = F.binary_cross_entropy(torch.sigmoid(model(inputs).squeeze(1)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
