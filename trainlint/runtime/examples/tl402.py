"""TL402: gradients clipped after ``optimizer.step()``.

The step has already applied the unclipped gradients, so clipping afterwards changes nothing:
the recurrent network below diverges exactly as if there were no clipping. The fix moves the
clipping before the step.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL402"],
    "steps": 80,
    "unsafe_fixes": True,
    "why": "clipping after the step does not clip the update",
    "effects": ["finite"],
    "shows_with": "exploding gradients: more steps (--steps 200), long sequences",
    "original": [("nonfinite_losses", ">", 0)],
    "fixed": [("nonfinite_losses", "==", 0), ("grad_norm_max", "<=", 1.0001), ("loss_ratio", "<", 0.2)],
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
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)


if __name__ == "__main__":
    main()
