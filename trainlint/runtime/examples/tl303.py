"""TL303: NaN in a module's activations replaced by numbers in forward.

A feature layer takes the square root of its projection to compress large values, and masks the
NaN that negative inputs give with ``nan_to_num``. The mask replaces the value but not its
gradient: backward still carries NaN to the projection's weights, which become NaN after the
first step, while every loss stays finite (the NaN outputs are masked to 0) and the run looks
quiet. Made by hand (the rule has no automatic fix): the cause fixed, a signed square root
that is defined everywhere, and the mask removed.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL303"],
    "steps": 30,
    "why": "a NaN masked in forward still reaches the weights through its gradient",
    "by_hand": [
        (
            "        h = torch.nan_to_num(torch.sqrt(self.proj(x)), nan=0.0)\n",
            "        z = self.proj(x)\n        h = torch.sign(z) * torch.sqrt(z.abs() + 1e-6)\n",
        ),
    ],
    "original": [("nonfinite_losses", "==", 0), ("nonfinite_weights", "is", True)],
    "fixed": [("nonfinite_weights", "is", False), ("loss_ratio", "<", 0.9)],
}

STEPS = 30


class Compressor(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(16, 32)
        self.head = torch.nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nan_to_num(torch.sqrt(self.proj(x)), nan=0.0)
        return self.head(h)


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = torch.randn(256, 16, device=device)
    targets = (inputs[:, :4].sum(dim=1) > 0).long()
    model = Compressor().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    for step in range(STEPS):
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
