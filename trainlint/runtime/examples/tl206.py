"""TL206: a sigmoid applied twice, the model's output squashed before ``binary_cross_entropy_with_logits``.

``binary_cross_entropy_with_logits`` applies its own sigmoid, so the loss sees ``sigmoid(sigmoid(z))``, which
lies between 0.5 and 0.73: the loss cannot go below 0.31 for a positive nor 0.69 for a negative
(about 0.5 on balanced labels), and its gradient through two sigmoids stays small. Training barely moves. The fix
(unsafe: the model trains differently after it) passes the logits.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL206"],
    "steps": 60,
    "unsafe_fixes": True,
    "why": "the loss of sigmoid(sigmoid(z)) saturates and its gradient vanishes",
    "effects": ["loss_falls", "grad_norm_larger"],
    "shows_with": "a problem the model can fit, trained for more steps",
    "original": [("loss_last", ">", 0.45)],
    "fixed": [("loss_last", "<", 0.2)],
}

STEPS = 60


def main() -> None:
    torch.manual_seed(0)
    inputs = torch.randn(256, 8)
    targets = (inputs[:, 0] + inputs[:, 1] > 0).float().unsqueeze(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    for step in range(STEPS):
        loss = F.binary_cross_entropy_with_logits(torch.sigmoid(model(inputs)), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
