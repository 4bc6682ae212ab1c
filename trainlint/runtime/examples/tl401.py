"""TL401: a recurrent network trained without gradient clipping.

A plain tanh RNN with PyTorch's default initialisation and SGD at lr 0.2 learns to recall the
start of a 40-step sequence; within a few dozen steps the gradient through time explodes, one
step throws the weights away and the loss becomes NaN. The fix (unsafe: it changes the updates)
clips the gradient norm to 1 before the step.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL401"],
    "steps": 80,
    "unsafe_fixes": True,
    "why": "exploding gradients through time",
    "effects": ["finite"],
    "shows_with": "long sequences or a large learning rate: more steps (--steps 200)",
    "original": [("nonfinite_losses", ">", 0)],
    "fixed": [("nonfinite_losses", "==", 0), ("loss_ratio", "<", 0.2)],
}

STEPS = 80


class SequenceModel(torch.nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.rnn = torch.nn.RNN(8, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(sequence)
        return self.head(out[:, -1])


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sequences = torch.randn(64, 40, 8, device=device)
    targets = sequences[:, :5, 0].sum(dim=1, keepdim=True)  # recall the start of the sequence
    model = SequenceModel().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)

    for step in range(STEPS):
        loss = F.mse_loss(model(sequences), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
