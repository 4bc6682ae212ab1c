"""TL405: the loss, still attached to its graph, added to a running total every iteration.

``total_loss += loss`` keeps every iteration's autograd graph alive through the total: after
``backward()`` the saved activations are freed, but the graph itself is not, and an RNN
unrolled over 64 time steps makes hundreds of nodes per iteration (measured here: about 270 kB
held per step). The process's memory grows step after step for as long as the total lives.
The fix adds ``loss.item()``, a Python number.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL405"],
    "steps": 40,
    "why": "each iteration's graph stays alive through the running total",
    "effects": ["memory_flat"],
    "shows_with": "a graph with many nodes per iteration (an unrolled RNN) and more steps",
    "original": [("memory_growth_mb", ">", 0.1)],
    "fixed": [("memory_growth_mb", "<", "0.25x original")],
}

STEPS = 40
TIME_STEPS = 64


def main() -> float:
    torch.manual_seed(0)
    inputs = torch.randn(32, TIME_STEPS, 8)
    targets = inputs.sum(dim=(1, 2)).unsqueeze(1) / TIME_STEPS
    cell = torch.nn.RNNCell(8, 256)
    head = torch.nn.Linear(256, 1)
    optimizer = torch.optim.SGD([*cell.parameters(), *head.parameters()], lr=0.01)

    total_loss = 0.0
    for step in range(STEPS):
        hidden = torch.zeros(32, 256)
        for t in range(TIME_STEPS):
            hidden = cell(inputs[:, t], hidden)
        loss = F.mse_loss(head(hidden), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total_loss += loss
    return total_loss / STEPS


if __name__ == "__main__":
    main()
