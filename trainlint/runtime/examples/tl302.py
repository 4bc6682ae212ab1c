"""TL302: every parameter clamped in place right after initialisation.

Clamping all weights to [-0.01, 0.01] (weight clipping copied from a WGAN critic, applied once to
a classifier) shrinks each layer's gain about tenfold: through six layers the signal and the
gradient reaching the first layer vanish, and the loss does not move. The fix (unsafe: it changes
the initialisation) removes the loop.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL302"],
    "steps": 40,
    "unsafe_fixes": True,
    "why": "clamped weights make the first layer's gradient vanish",
    "effects": ["first_layer_grad_larger", "loss_falls"],
    "shows_with": "weights clamped at their bounds: more steps (--steps 200)",
    "original": [("first_layer_grad", "<", 1e-6)],
    "fixed": [("first_layer_grad", ">", "1000x original"), ("loss_ratio", "<", 0.9)],
}

STEPS = 40


class DeepClassifier(torch.nn.Module):
    def __init__(self, width: int = 64, depth: int = 6) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = [torch.nn.Linear(16, width), torch.nn.ReLU()]
        for _ in range(depth - 2):
            layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*layers, torch.nn.Linear(width, 2))
        for p in self.parameters():
            p.data.clamp_(-0.01, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = torch.randn(256, 16, device=device)
    targets = (inputs[:, :4].sum(dim=1) > 0).long()
    model = DeepClassifier().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    for step in range(STEPS):
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
