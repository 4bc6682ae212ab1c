"""A mixed-precision training loop with the mistakes trainlint was built to catch.

Run `trainlint examples/` to see them, `trainlint --diff examples/` for the fixes.
"""

import torch
import torch.nn.functional as F
from torch.cuda.amp import GradScaler

from models import build_model


def batches(steps: int, batch: int = 16, length: int = 12):
    for _ in range(steps):
        tokens = torch.randint(0, 100, (batch, length))
        yield tokens, tokens % 8


def train(steps: int = 100, device: str = "cuda") -> None:
    model = build_model({"width": 64}).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = GradScaler()

    for tokens, tags in batches(steps):
        tokens, tags = tokens.to(device), tags.to(device)
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            logits = model(tokens)
            probs = torch.softmax(logits, dim=-1)
            loss = F.nll_loss(torch.log(probs).flatten(0, 1), tags.flatten())

        scaler.scale(loss).backward()
        grad_norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        if not torch.isfinite(grad_norm):
            continue
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()


if __name__ == "__main__":
    train()
