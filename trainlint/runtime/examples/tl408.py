"""TL408: a ``DistributedSampler`` that is never told which epoch it is.

The sampler shuffles with the seed ``seed + epoch``, and the epoch stays 0: every epoch visits
the data in the same order on every rank. The fix tells the sampler the epoch at the top of
each epoch. (This docstring does not spell the method: the rule stays quiet in a file that does.)

This run has one process (gloo, world size 1), so it cannot show what the rule is about: the
runtime does not record which samples a rank draws, and one rank has no other to overlap with.
``benchmarks/loop_rules_evidence.py`` measures it with two gloo processes: the share of rank 0's
samples rank 1 also sees without a sampler, and the order each epoch repeats without
the epoch. The example still checks that the fixed code trains as the original does.
"""

import os
import tempfile

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

CONFIRM = {
    "rules": ["TL408"],
    "steps": 12,
    "why": "every epoch visits the data in the same order on every rank",
    "effects": ["data_per_rank"],
    "shows_with": "two or more ranks (torchrun); the samples each draws are measured by benchmarks/loop_rules_evidence.py",
    "original": [("ranks", ">=", 2)],
    "fixed": [("exception", "is", None), ("loss_fell", "is", True)],
}

EPOCHS = 3


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as rendezvous:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(rendezvous, 'store')}", rank=0, world_size=1)
        try:
            train()
        finally:
            dist.destroy_process_group()


def train() -> None:
    inputs = torch.randn(256, 8)
    dataset = TensorDataset(inputs, inputs @ torch.randn(8, 1))
    model = DistributedDataParallel(torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sampler = DistributedSampler(dataset, shuffle=True)
    loader = DataLoader(dataset, batch_size=64, sampler=sampler)
    for epoch in range(EPOCHS):
        for x, y in loader:
            loss = F.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


if __name__ == "__main__":
    main()
