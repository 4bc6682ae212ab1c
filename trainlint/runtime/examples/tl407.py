"""TL407: gradient accumulation that does not divide the loss by the number of micro-batches.

Sixteen micro-batches add their gradients before each ``optimizer.step()``; each loss is a
mean over its micro-batch, so the accumulated gradient is 16 times the gradient of the whole
batch, and every step is 16 times longer than the learning rate says. With a learning rate
that is right for the averaged gradient, the undivided run overshoots and diverges. The fix
(unsafe: it changes what is trained) divides each loss by the number of micro-batches.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL407"],
    "steps": 30,
    "unsafe_fixes": True,
    "why": "the accumulated gradient is 16x the batch's, so each step is 16x too long",
    "effects": ["grad_norm_smaller", "loss_falls", "finite"],
    "shows_with": "a learning rate near the largest stable one for the averaged gradient",
    "original": [("loss_fell", "is", False)],
    "fixed": [("loss_ratio", "<", 0.2), ("nonfinite_losses", "==", 0)],
}

STEPS = 30
ACCUMULATION = 16


def main() -> None:
    torch.manual_seed(0)
    inputs = torch.randn(STEPS * ACCUMULATION, 32, 8)
    targets = inputs @ torch.randn(8, 1)
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)

    for i in range(STEPS * ACCUMULATION):
        loss = F.mse_loss(model(inputs[i]), targets[i])
        loss.backward()
        if (i + 1) % ACCUMULATION == 0:
            optimizer.step()
            optimizer.zero_grad()


if __name__ == "__main__":
    main()
