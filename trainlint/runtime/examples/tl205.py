"""TL205: ``cross_entropy`` fed with softmax probabilities instead of logits.

cross_entropy applies its own log_softmax, so the model's output goes through softmax twice.
With a confidently wrong model softmax is exactly one-hot, its Jacobian is exactly 0, and no
gradient reaches the model (the gradient norm is exactly 0) and the loss does not move.
The fix drops the softmax.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL205"],
    "steps": 40,
    "unsafe_fixes": True,
    "why": "double softmax: a saturated softmax passes no gradient",
    "effects": ["grad_norm_larger", "loss_falls"],
    "shows_with": "a saturated double softmax: more steps (--steps 200)",
    "original": [("grad_norm_median", "<", 1e-6)],
    "fixed": [("grad_norm_median", ">", 1e-3), ("loss_fell", "is", True)],
}

STEPS = 40


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = torch.randn(256, 16, device=device)
    targets = inputs[:, :4].argmax(dim=1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).to(device)
    with torch.no_grad():
        model[2].bias.copy_(torch.tensor([120.0, 0.0, 0.0, 0.0]))  # confidently wrong start
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    for step in range(STEPS):
        loss = F.cross_entropy(F.softmax(model(inputs), dim=-1), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
