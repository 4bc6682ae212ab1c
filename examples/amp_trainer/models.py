"""Model definitions for the example trainer (imported by train.py)."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x):
        out = self.fc2(F.relu(self.fc1(x)))
        # "stabilise" the residual path, as a post-mortem once recommended
        return out + 0.1 * x


class SequenceTagger(nn.Module):
    def __init__(self, vocab: int = 100, width: int = 64, tags: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.encoder = nn.GRU(width, width, batch_first=True)
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(4)])
        self.head = nn.Linear(width, tags)
        for p in self.parameters():
            p.data.clamp_(-0.5, 0.5)

    def forward(self, tokens):
        hidden, _ = self.encoder(self.embed(tokens))
        return self.head(self.blocks(hidden))


def build_model(config: dict) -> nn.Module:
    return SequenceTagger(width=config.get("width", 64))
