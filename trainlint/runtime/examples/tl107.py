"""TL107: a step skipped on a NaN check after backward, without zeroing the gradients.

One corrupted batch (a NaN in the data, as a bad record in a real dataset) gives a NaN loss; the
loop skips the step but keeps the NaN gradients, and the next backward adds to them: the next
step writes NaN into every weight and every later loss is NaN. The fix zeroes the gradients
before skipping, so only the bad batch is lost.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL107"],
    "steps": 60,
    "why": "the NaN gradients of a skipped batch reach the next step",
    "effects": ["finite"],
    "shows_with": (
        "a step the GradScaler skips for NaN/Inf gradients: float16 autocast with an enabled GradScaler: "
        "a GPU (--device cuda), or CUDA autocast mapped to CPU float16 (--device cpu), and more steps"
    ),
    "original": [("nonfinite_weights", "is", True)],
    "fixed": [("nonfinite_weights", "is", False), ("nonfinite_losses", "<=", 1), ("loss_ratio", "<", 0.5)],
}

STEPS = 60
CORRUPTED_BATCH = 20


def make_batches(device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    weights = torch.randn(16, 1)
    batches = []
    for _ in range(STEPS):
        inputs = torch.randn(64, 16)
        batches.append((inputs.to(device), (inputs @ weights).to(device)))
    batches[CORRUPTED_BATCH][0][3, 5] = float("nan")  # one bad record
    return batches


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    for inputs, targets in make_batches(device):
        loss = F.mse_loss(model(inputs), targets)
        loss.backward()
        if not torch.isfinite(loss):
            continue
        optimizer.step()
        optimizer.zero_grad()


if __name__ == "__main__":
    main()
