"""TL403: no ``optimizer.zero_grad()`` in the training loop.

Gradients accumulate across steps: step k applies the sum of all k gradients so far, so the
effective learning rate grows every step and plain SGD overshoots and diverges where it would
converge. The fix zeroes the gradients after each step.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL403"],
    "steps": 60,
    "why": "accumulated gradients grow the effective learning rate every step",
    "effects": ["loss_falls", "finite"],
    "shows_with": "more steps (--steps 100): the accumulated gradient grows every step",
    "original": [("loss_fell", "is", False)],
    "fixed": [("loss_ratio", "<", 0.2), ("nonfinite_losses", "==", 0)],
}

STEPS = 60


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = torch.randn(256, 16, device=device)
    targets = inputs @ torch.randn(16, 1, device=device)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    for step in range(STEPS):
        loss = F.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
