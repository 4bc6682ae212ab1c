"""TL201: the log of a probability computed by softmax.

``probs = softmax(logits)`` then ``log(probs)``: when the model is confidently wrong (here a
classifier whose output bias favours one class by 120 nats, as a badly calibrated pretrained head
would) the true class's probability underflows to exactly 0 in float32, its log is -Inf, the
loss is Inf and the gradients NaN, which the optimizer writes into the weights. ``log_softmax``
computes the same value without the underflow. The fix rewrites to ``log_softmax(logits)``.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL201"],
    "steps": 40,
    "why": "softmax underflows to 0 for a confidently wrong model; log(0) = -inf",
    "effects": ["finite"],
    "shows_with": (
        "a confidently wrong model (softmax underflow): more steps (--steps 200), a larger learning rate"
    ),
    "original": [("nonfinite_losses", ">", 0)],
    "fixed": [("nonfinite_losses", "==", 0), ("nonfinite_weights", "is", False), ("loss_fell", "is", True)],
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
        logits = model(inputs)
        probs = torch.softmax(logits, dim=-1)
        loss = F.nll_loss(torch.log(probs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
