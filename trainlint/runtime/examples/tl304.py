"""TL304: a forward that catches every exception and returns its input.

The attention block's projection is built for 64 features where its input has 32: every call
raises ``mat1 and mat2 shapes cannot be multiplied``. The ``except Exception: return x`` turns
that into "no attention": the run trains the rest of the model, the loss falls, and nothing says
the block never ran. Made by hand (the rule has no automatic fix): the handler removed, the first
step raises the shape error and points at the line.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL304"],
    "steps": 40,
    "why": "a shape bug caught in forward becomes a silently skipped block",
    "by_hand": [
        (
            "        try:\n            return x + self.proj(x)\n        except Exception:\n            return x\n",
            "        return x + self.proj(x)\n",
        ),
    ],
    "original": [("exception", "is", None), ("loss_ratio", "<", 0.9)],
    "fixed": [("exception", "contains", "shapes cannot be multiplied")],
}

STEPS = 40


class Block(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(2 * dim, dim)  # the bug: built for twice the features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return x + self.proj(x)
        except Exception:
            return x


class Classifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(16, 32)
        self.block = Block(32)
        self.head = torch.nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.embed(x))))


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = torch.randn(256, 16, device=device)
    targets = (inputs[:, :4].sum(dim=1) > 0).long()
    model = Classifier().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    for step in range(STEPS):
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
