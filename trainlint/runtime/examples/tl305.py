"""TL305: hidden activations hard-clamped in forward.

Sensor readings around a baseline of 5 go in without normalization, into a layer initialized at
4x the usual scale, whose outputs are clamped to [-3, 3] "for stability". Most units start past
the bounds for every example: their gradient is exactly zero, so the first layer's weights
feeding them never learn (about 60% of its gradient entries are exactly 0 at every step). A
soft cap with the same range, ``3 * tanh(h / 3)``, keeps a gradient everywhere (made by hand: the
rule has no automatic fix).
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL305"],
    "steps": 60,
    "why": "a hard clamp zeroes the gradient of every unit past its bounds",
    "by_hand": [("        h = h.clamp(-3.0, 3.0)\n", "        h = 3.0 * torch.tanh(h / 3.0)\n")],
    "original": [("first_layer_zero_grad", ">", 0.4)],
    "fixed": [("first_layer_zero_grad", "<", 0.05), ("loss_last", "<", "1.0x original")],
}

STEPS = 60


class Tagger(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(16, 64)
        self.head = torch.nn.Linear(64, 2)
        with torch.no_grad():
            self.proj.weight.mul_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        h = h.clamp(-3.0, 3.0)
        return self.head(h)


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    readings = 5.0 + 0.5 * torch.randn(256, 16, device=device)
    targets = ((readings - 5.0)[:, :4].sum(dim=1) > 0).long()
    model = Tagger().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    for step in range(STEPS):
        loss = F.cross_entropy(model(readings), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
