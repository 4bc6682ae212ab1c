"""TL202: ``log(softmax(x))`` instead of ``log_softmax(x)``.

With a confidently wrong model (output bias favouring one class by 120 nats) softmax underflows
to exactly 0 for the true class, log gives -Inf, the loss is Inf and the gradients NaN.
The fix rewrites to ``log_softmax``.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL202"],
    "steps": 40,
    "why": "softmax underflows to 0 for a confidently wrong model; log(0) = -inf",
    "effects": ["finite"],
    "shows_with": (
        "a confidently wrong model (softmax underflow): more steps (--steps 200), a larger learning rate"
    ),
    "original": [("nonfinite_losses", ">", 0)],
    "fixed": [("nonfinite_losses", "==", 0), ("nonfinite_weights", "is", False), ("loss_fell", "is", True)],
}

STEPS = 40


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = torch.randn(256, 16, device=device)
    targets = inputs[:, :4].argmax(dim=1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).to(device)
    with torch.no_grad():
        model[2].bias.copy_(torch.tensor([120.0, 0.0, 0.0, 0.0]))  # confidently wrong start
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    for step in range(STEPS):
        log_probs = torch.log(F.softmax(model(inputs), dim=-1))
        loss = F.nll_loss(log_probs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
