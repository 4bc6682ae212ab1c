"""TL404: the model left in ``eval()`` after a validation, for the rest of training.

``validate`` switches the model to evaluation mode and nothing switches it back: from the
second epoch on, batch norm normalizes with the running statistics it had gathered over two
batches (a tenth of the way to the data's scale) instead of each batch's own, and stops
updating them. On inputs far from zero mean, the first layer's outputs reach the next layer
unnormalized and the loss ends more than twice as high as in training mode. The fix calls
``model.train()`` at the top of the training iteration.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL404"],
    "steps": 40,
    "why": "batch norm keeps normalizing with stale running statistics once validation left eval mode",
    "effects": ["loss_falls"],
    "shows_with": "inputs whose scale differs from batch norm's initial statistics, trained past a validation",
    "original": [("loss_ratio", ">", 0.5)],
    "fixed": [("loss_ratio", "<", "0.6x original")],
}

EPOCHS = 20
BATCHES = 2


def validate(model, inputs, targets):
    model.eval()
    with torch.no_grad():
        return (model(inputs).argmax(dim=1) == targets).float().mean().item()


def main() -> None:
    torch.manual_seed(0)
    inputs = 10.0 + 5.0 * torch.randn(BATCHES * 128, 16)
    targets = (inputs[:, :4].sum(dim=1) > 40.0).long()
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.BatchNorm1d(64), torch.nn.ReLU(), torch.nn.Linear(64, 2)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    accuracies = []
    model.train()
    for epoch in range(EPOCHS):
        for b in range(BATCHES):
            batch = slice(b * 128, (b + 1) * 128)
            loss = F.cross_entropy(model(inputs[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        accuracies.append(validate(model, inputs, targets))


if __name__ == "__main__":
    main()
