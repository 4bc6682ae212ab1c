"""TL301: a residual connection whose identity path is scaled down (``out + 0.1 * x``).

The identity path is what carries the gradient through a deep network; scaled by 0.1 in each of
16 blocks it multiplies the gradient reaching the first layer by about 0.1**16, and the first
layer stops learning. The fix drops the factor.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL301"],
    "steps": 20,
    "unsafe_fixes": True,
    "why": "the scaled identity path makes the first layer's gradient vanish",
    "effects": ["first_layer_grad_larger"],
    "shows_with": "a deep enough stack of scaled identity paths: more steps, the full model",
    "original": [("first_layer_grad", "<", 1e-6)],
    "fixed": [("first_layer_grad", ">", "1000x original"), ("nonfinite_losses", "==", 0)],
}

STEPS = 20
DEPTH = 16


class ResidualBlock(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(width, width)
        self.fc2 = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(F.relu(self.fc1(x)))
        return out + 0.1 * x


class DeepNet(torch.nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = torch.nn.Linear(16, width)
        self.blocks = torch.nn.Sequential(*[ResidualBlock(width) for _ in range(DEPTH)])
        self.head = torch.nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = torch.randn(256, 16, device=device)
    targets = (inputs[:, :4].sum(dim=1) > 0).long()
    model = DeepNet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    for step in range(STEPS):
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
