"""TL203: ``log(sigmoid(x))`` instead of ``logsigmoid(x)``.

A logistic loss written as ``-log(sigmoid(margin))``: for a confidently wrong model (margins
around -120) sigmoid underflows to exactly 0 in float32, log gives -Inf and the gradients are
NaN. The fix rewrites to ``logsigmoid``.
"""

import torch

CONFIRM = {
    "rules": ["TL203"],
    "steps": 40,
    "why": "sigmoid underflows to 0 for a confidently wrong model; log(0) = -inf",
    "effects": ["finite"],
    "shows_with": (
        "a confidently wrong model (sigmoid underflow): more steps (--steps 200), a larger learning rate"
    ),
    "original": [("nonfinite_losses", ">", 0)],
    "fixed": [("nonfinite_losses", "==", 0), ("nonfinite_weights", "is", False), ("loss_fell", "is", True)],
}

STEPS = 40


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = torch.randn(256, 16, device=device)
    signs = torch.where(inputs[:, 0] > 0, 1.0, -1.0)  # labels as +1 / -1
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).to(device)
    with torch.no_grad():
        model[2].bias.fill_(-120.0)  # confidently "negative" for every input
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    for step in range(STEPS):
        margin = signs * model(inputs).squeeze(1)
        loss = -torch.log(torch.sigmoid(margin)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
