"""TL406: an evaluation that runs the model without ``torch.no_grad()``.

Every step, the model's predictions on a validation set are kept (for a calibration plot at the
end of training). Without ``no_grad`` each prediction holds the graph of the forward that made
it, activations included, for a backward that never comes: memory grows by a whole evaluation
per step. The fix runs the evaluation loop under ``torch.no_grad()``.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL406"],
    "steps": 30,
    "why": "each kept prediction holds its forward's activations for a backward that never comes",
    "effects": ["memory_flat"],
    "shows_with": "an evaluation whose outputs outlive it (kept, gathered), or a larger model",
    "original": [("memory_growth_mb", ">", 0.5)],
    "fixed": [("memory_growth_mb", "<", "0.25x original")],
}

STEPS = 30


def evaluate(model, batches):
    model.eval()
    probabilities = []
    for inputs in batches:
        probabilities.append(model(inputs).softmax(dim=1))
    model.train()
    return torch.cat(probabilities)


def main() -> list:
    torch.manual_seed(0)
    inputs = torch.randn(512, 64)
    targets = (inputs[:, :8].sum(dim=1) > 0).long()
    validation = [torch.randn(256, 64) for _ in range(4)]
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(256, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 2),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    history = []
    for step in range(STEPS):
        batch = slice((step * 64) % 512, (step * 64) % 512 + 64)
        loss = F.cross_entropy(model(inputs[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(evaluate(model, validation))
    return history


if __name__ == "__main__":
    main()
