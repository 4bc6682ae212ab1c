"""TL408: DDP training whose data is not sharded per rank, or never reshuffled per epoch."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from trainlint.analysis.data_loading import DataLoading, RepeatedIteration
from trainlint.analysis.imports import dotted_name
from trainlint.analysis.loop_facts import LoopFacts, TrainingLoop
from trainlint.analysis.values import Constant, Instance, ValueFlow, Values
from trainlint.analysis.values.torch_semantics import DISTRIBUTED_SAMPLERS, WHOLE_DATASET_SAMPLERS
from trainlint.context import FileContext
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule

_SHARDING_ARGUMENT_WORDS = ("rank", "world", "shard", "replica", "num_gpus", "node")


class DistributedDataNotSharded(Rule):
    """## What it does
    Reports two mistakes of `DistributedDataParallel` data loading:

    - a training loop of a module that wraps its model in `DistributedDataParallel` iterates a
      `DataLoader` built without a `DistributedSampler`: no `sampler` at all, or a sampler that
      draws from the whole dataset (`RandomSampler`, `WeightedRandomSampler`,
      `SequentialSampler`, `SubsetRandomSampler`);
    - a `DataLoader` with a shuffling `DistributedSampler` iterated epoch after epoch (inside an
      epoch loop, or a `while True:` generator) when nothing in the module calls `set_epoch`.

    The loader is followed wherever it is built (a factory such as `data_sampler(...)`, another
    module) and wherever it is iterated (through `enumerate`, `tqdm`, `iter`, a function it is
    passed to). It does not apply when a framework shards the data (Accelerate's `prepare`,
    Fabric's `setup_dataloaders`, Lightning's `Trainer`, the HF `Trainer` add the
    `DistributedSampler` and call `set_epoch`), to an `IterableDataset` or WebDataset pipeline
    (they shard themselves), to a dataset or sampler built with the rank or world size (sharded
    by hand), to a `batch_sampler`, nor to evaluation loaders (every rank evaluating the whole set
    is common and harmless). `DistributedSampler(shuffle=False)` needs no `set_epoch`.

    ## Why is this bad?
    Without a `DistributedSampler`, every rank iterates the whole dataset: with the same seed,
    the same batches in the same order, so DDP averages identical gradients and N GPUs do the
    work of one, N times per epoch (or, with different seeds, each rank samples the whole set
    independently and an "epoch" is N epochs). A `DistributedSampler` shuffles with a seed of
    `seed + epoch`; without `set_epoch(epoch)` the epoch stays 0 and every epoch visits the data
    in exactly the same order, which loses the benefit of shuffling.

    The fix for the second inserts `loader.sampler.set_epoch(epoch)` at the top of the epoch
    loop, when the loop is `for epoch in ...` and the loader is a name there. The first has no
    fix: the sampler, its `shuffle` and the loader's `shuffle=False` must be chosen together.

    ## Evidence
    Measured with torch 2.13 on CPU with two gloo processes (`benchmarks/loop_rules_evidence.py`):
    with a plain `DataLoader(shuffle=True)` and the same seed on both ranks, 100% of the samples
    rank 0 sees in an epoch are also seen by rank 1, in the same order; with a `DistributedSampler`,
    0%. Without `set_epoch`, epochs 0, 1 and 2 visit the samples in the same order on each rank;
    with it, the orders differ.

    ## Fix safety
    Safe (`set_epoch`): the first epoch is unchanged (`set_epoch(0)` is the sampler's default),
    and later epochs get the reshuffle that `shuffle=True` asked for; the original differs only in
    repeating the first epoch's order.
    """

    code = "TL408"
    name = "distributed-data-not-sharded"
    summary = "DDP training data not sharded per rank (no `DistributedSampler`) or never reshuffled (`set_epoch`)"
    level = "error"
    fix_applicability = "safe"
    triggers = ("DistributedSampler", "DistributedDataParallel", "DDP")
    examples = [
        Example(
            code='''
            import torch
            import torch.nn.functional as F
            from torch.nn.parallel import DistributedDataParallel
            from torch.utils.data import DataLoader, DistributedSampler

            def train(model, dataset, epochs, rank):
                model = DistributedDataParallel(model, device_ids=[rank])
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
                loader = DataLoader(dataset, batch_size=64, sampler=DistributedSampler(dataset))
                for epoch in range(epochs):
                    for inputs, targets in loader:
                        optimizer.zero_grad()
                        F.cross_entropy(model(inputs), targets).backward()
                        optimizer.step()
            ''',
            expect=[(9, 57)],
            fixed='''
            import torch
            import torch.nn.functional as F
            from torch.nn.parallel import DistributedDataParallel
            from torch.utils.data import DataLoader, DistributedSampler

            def train(model, dataset, epochs, rank):
                model = DistributedDataParallel(model, device_ids=[rank])
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
                loader = DataLoader(dataset, batch_size=64, sampler=DistributedSampler(dataset))
                for epoch in range(epochs):
                    loader.sampler.set_epoch(epoch)
                    for inputs, targets in loader:
                        optimizer.zero_grad()
                        F.cross_entropy(model(inputs), targets).backward()
                        optimizer.step()
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch
        import torch.nn.functional as F
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DataLoader, DistributedSampler

        def train(model, dataset, epochs, rank):
            model = DistributedDataParallel(model, device_ids=[rank])
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            sampler = DistributedSampler(dataset)
            loader = DataLoader(dataset, batch_size=64, sampler=sampler)
            for epoch in range(epochs):
                sampler.set_epoch(epoch)
                for inputs, targets in loader:
                    optimizer.zero_grad()
                    F.cross_entropy(model(inputs), targets).backward()
                    optimizer.step()
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        loading = ctx.get(DataLoading)
        if loading.shards_elsewhere():
            return
        yield from self._unsharded(ctx, loading)
        yield from self._never_reshuffled(ctx, loading)

    def _unsharded(self, ctx: FileContext, loading: DataLoading) -> Iterator[Finding]:
        reported: set[cst.CSTNode] = set()
        for loop in ctx.get(LoopFacts).training_loops():
            for loader, iterated in _loaders_of(loading, loop):
                site = loader.site
                if site is None or site.node in reported or not _under_ddp(ctx, loading, loop, loader):
                    continue
                problem = _sampling_problem(loading, loader)
                if problem is None or site.ctx.get(DataLoading).shards_elsewhere():
                    continue
                reported.add(site.node)
                node = site.node if site.ctx is ctx else iterated
                message = (
                    f"`{site.ctx.short_code(site.node)}` feeds a `DistributedDataParallel` training loop {problem}: every "
                    "rank trains on the whole dataset (with the same seed, the same batches), so the ranks average "
                    "identical gradients; use `sampler=DistributedSampler(dataset)` (and `shuffle=False` on the loader)"
                )
                yield ctx.report(self, node, message)

    def _never_reshuffled(self, ctx: FileContext, loading: DataLoading) -> Iterator[Finding]:
        reported: set[cst.CSTNode] = set()
        for repeated in loading.repeated_iterations():
            for loader in repeated.loaders:
                for sampler in _distributed_samplers(loading, loader):
                    site = sampler.site
                    if site is None or site.node in reported or _calls_set_epoch(ctx, loader, sampler):
                        continue
                    reported.add(site.node)
                    node = site.node if site.ctx is ctx else repeated.node
                    message = (
                        f"`{site.ctx.short_code(site.node)}` shuffles with the seed `seed + epoch`, but nothing calls "
                        f"`set_epoch()` while `{ctx.short_code(repeated.iterable)}` is iterated epoch after epoch: every "
                        "epoch visits the data in the same order"
                    )
                    yield ctx.report(self, node, message, _set_epoch_fix(ctx, repeated))


def _loaders_of(loading: DataLoading, loop: TrainingLoop) -> Iterator[tuple[Instance, cst.BaseExpression]]:
    """The loaders a training loop iterates, or passes to the training function it calls."""
    if isinstance(loop.node, cst.For):
        for loader in loading.loaders(loop.node.iter):
            yield loader, loop.node.iter
    for call in loop.runs:
        for arg in call.args:
            for loader in loading.loaders(arg.value):
                yield loader, arg.value
    for call in loading.next_calls(loop.node.body):  # `x, y = next(batches)`
        for loader in loading.loaders(call.args[0].value):
            yield loader, call


def _under_ddp(ctx: FileContext, loading: DataLoading, loop: TrainingLoop, loader: Instance) -> bool:
    if loading.builds_ddp(loop.scope):
        return True
    site = loader.site
    if site is None:
        return False
    other = site.ctx.get(DataLoading)
    return other.builds_ddp(site.ctx.get(ValueFlow).scopes.scope_of(site.node))


def _sampling_problem(loading: DataLoading, loader: Instance) -> str | None:
    """Why the loader gives every rank the whole dataset; None when it may not."""
    if loading.argument(loader, "batch_sampler") is not None or _sharded_by_hand(loading, loader):
        return None
    sampler = loading.argument(loader, "sampler")
    if sampler is None:
        return "without a `DistributedSampler` (no `sampler`)"
    if sampler.unknown or not sampler.items:
        return None
    classes = {getattr(v, "cls", None) for v in sampler}
    if all(cls in WHOLE_DATASET_SAMPLERS for cls in classes):
        names = ", ".join(sorted(f"`{str(cls).rpartition('.')[2]}`" for cls in classes))
        return f"with {names}, which draws from the whole dataset in every process"
    return None


def _sharded_by_hand(loading: DataLoading, loader: Instance) -> bool:
    """The dataset is built with the rank or the world size (``Shard(data, rank, world)``,
    ``Subset(data, indices[rank::world])``), or is an ``IterableDataset``."""
    dataset = loading.argument(loader, "dataset")
    if dataset is None:
        return False
    for value in dataset:
        if not isinstance(value, Instance):
            continue
        call = value.call
        if call is not None and value.site is not None:
            code = value.site.ctx.code(call).lower()
            if any(word in code for word in _SHARDING_ARGUMENT_WORDS):
                return True
        flow = value.site.ctx.get(ValueFlow) if value.site is not None else None
        if flow is not None and any("IterableDataset" in base for base in flow.base_names(value.cls)):
            return True
    return False


def _distributed_samplers(loading: DataLoading, loader: Instance) -> list[Instance]:
    """The shuffling ``DistributedSampler``s the loader may have been built with."""
    sampler = loading.argument(loader, "sampler")
    if sampler is None:
        return []
    found = []
    for value in sampler.of_type(Instance):
        if value.cls not in DISTRIBUTED_SAMPLERS:
            continue
        shuffle = value.site.ctx.get(ValueFlow).construction_argument(value, 3, "shuffle") if value.site else None
        if shuffle is None or not _must_be_false(shuffle):
            found.append(value)
    return found


def _must_be_false(values: Values) -> bool:
    return values.must(lambda v: isinstance(v, Constant) and v.value is False)


def _calls_set_epoch(ctx: FileContext, loader: Instance, sampler: Instance) -> bool:
    """``set_epoch`` in the module iterating the loader, or where the loader or sampler is built."""
    contexts = [ctx, *(site.ctx for site in (loader.site, sampler.site) if site is not None)]
    return any(other.get(DataLoading).calls_set_epoch() for other in contexts)




def _set_epoch_fix(ctx: FileContext, repeated: RepeatedIteration) -> Fix | None:
    """``loader.sampler.set_epoch(epoch)`` first thing in ``for epoch in ...:``."""
    outer = repeated.outer
    loader = _named_loader(repeated.iterable)
    if not isinstance(outer, cst.For) or not isinstance(outer.target, cst.Name) or loader is None:
        return None
    if not isinstance(repeated.node, cst.For) or not isinstance(outer.body, cst.IndentedBlock):
        return None
    first = outer.body.body[0]
    code = f"{ctx.code(loader)}.sampler.set_epoch({outer.target.value})"
    return ctx.fix([ctx.insert_before(first, code)], "safe", f"Call `{code}` at the start of each epoch")


def _named_loader(expr: cst.BaseExpression) -> cst.BaseExpression | None:
    """``loader`` / ``self.train_loader`` in ``enumerate(loader)``, ``tqdm(loader)``."""
    while isinstance(expr, cst.Call):
        positional = [a.value for a in expr.args if a.keyword is None and not a.star]
        if not positional:
            return None
        expr = positional[0]
    return expr if dotted_name(expr) is not None else None
