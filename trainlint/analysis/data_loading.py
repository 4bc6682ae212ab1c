"""How training data reaches each process: ``DataLoader``s, their samplers, and their epochs.

For the distributed-data rule (TL408): which ``DataLoader`` a loop iterates (through
``enumerate``, ``tqdm``, ``iter``, a generator that re-iterates it forever), which sampler it was
built with (the value-flow engine follows ``sampler=data_sampler(...)`` into the factory and the
loader into the functions it is passed to), whether a loader is iterated again and again (a loop
around the loop over it, ``while True: yield from loader``), whether the code trains a
``DistributedDataParallel`` model, and whether anything calls ``set_epoch``.

API (``loading = ctx.get(DataLoading)``): ``loaders(expr)``, ``argument(instance, name)``,
``repeated_iterations()``, ``builds_ddp(scope)``, ``shards_elsewhere()``, ``calls_set_epoch()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.values import Instance, ValueFlow, Values
from trainlint.analysis.values.torch_semantics import DATA_LOADERS, DDP_WRAPPERS

if TYPE_CHECKING:
    from trainlint.context import FileContext

# DataLoader(dataset, batch_size=1, shuffle=None, sampler=None, batch_sampler=None, ...)
_POSITIONS = {"dataset": 0, "batch_size": 1, "shuffle": 2, "sampler": 3, "batch_sampler": 4}
# Wrappers that iterate what they are given: the loader is what they hand out.
_PASSING = frozenset({"enumerate", "iter", "tqdm", "trange", "islice", "cycle", "zip", "track", "progress_bar"})
# Words of code that shards the data itself, or hands the loader to a library that does
# (Accelerate's `prepare`, Fabric's `setup_dataloaders`, an IterableDataset, WebDataset).
_SHARDING_WORDS = ("prepare(", "setup_dataloaders", "IterableDataset", "webdataset", "split_by_node", "streaming=True")


@dataclass(frozen=True)
class RepeatedIteration:
    """``node`` iterates ``loaders`` and runs again and again (inside another loop)."""

    node: cst.CSTNode  # the ``for`` statement, or the ``yield from``
    iterable: cst.BaseExpression
    loaders: tuple[Instance, ...]
    outer: cst.For | cst.While  # the loop that repeats it


class DataLoading:
    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self.flow = ctx.get(ValueFlow)

    def loaders(self, expr: cst.BaseExpression, depth: int = 2) -> list[Instance]:
        """The ``DataLoader``s an iterated expression may be (``enumerate(loader)``,
        ``tqdm(loader)``, ``iter(loader)``); empty when it may be anything else."""
        expr = _peel(expr)
        if isinstance(expr, cst.Name) and depth > 0:  # `batches = iter(DataLoader(...))`
            assigned = self.flow.scopes.assigned_values(expr)
            if assigned and all(isinstance(value, cst.Call) and _peel(value) is not value for value in assigned):
                return [found for value in assigned for found in self.loaders(value, depth - 1)]
        values = self.flow.values(expr)
        if values.unknown or not values.items:
            return []
        instances = values.of_type(Instance)
        if len(instances) != len(values.items) or not all(i.cls in DATA_LOADERS for i in instances):
            return []
        return instances

    def argument(self, loader: Instance, name: str) -> Values | None:
        """What the loader (or sampler) was built with for ``name``; None when not passed."""
        return self.flow.flow_of(loader).construction_argument(loader, _POSITIONS.get(name, 99), name)

    def repeated_iterations(self) -> Iterator[RepeatedIteration]:
        """Iterations over a ``DataLoader`` inside another loop of the same function (the epoch
        loop; ``while True:`` in a generator)."""
        for node, iterable in _iterations(self.ctx):
            outer = next((a for a in self.ctx.ancestors(node) if isinstance(a, (cst.For, cst.While, cst.FunctionDef))), None)
            if not isinstance(outer, (cst.For, cst.While)):
                continue
            if isinstance(node, cst.For) and outer is node:
                continue
            found = self.loaders(iterable)
            if found:
                yield RepeatedIteration(node, iterable, tuple(found), outer)

    def next_calls(self, node: cst.CSTNode) -> Iterator[cst.Call]:
        """``next(batches)`` calls under a node (a loop body drawing its batches by hand)."""
        for call in self.ctx.nodes.of(cst.Call):
            if isinstance(call.func, cst.Name) and call.func.value == "next" and call.args:
                if any(a is node for a in self.ctx.ancestors(call)):
                    yield call

    def builds_ddp(self, scope: cst.CSTNode) -> bool:
        """The scope wraps a model in ``DistributedDataParallel`` (``DDP(model)``)."""
        for call in self.ctx.nodes.of(cst.Call):
            name = self.ctx.qualified_name(call.func) or ""
            if name in DDP_WRAPPERS or name.rpartition(".")[2] in ("DistributedDataParallel", "DDP"):
                if self.flow.scopes.scope_of(call) is scope or scope is self.ctx.module:
                    return True
        return False

    def shards_elsewhere(self) -> bool:
        """The module hands loaders to a library that shards them, or shards data itself."""
        text = self.ctx.source.text
        return any(word in text for word in _SHARDING_WORDS)

    def calls_set_epoch(self) -> bool:
        return "set_epoch" in self.ctx.source.text


def _peel(expr: cst.BaseExpression) -> cst.BaseExpression:
    """``loader`` in ``enumerate(loader)``, ``tqdm(iter(loader), desc=...)``."""
    while isinstance(expr, cst.Call):
        func = expr.func
        name = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else ""
        positional = [a.value for a in expr.args if a.keyword is None and not a.star]
        if name not in _PASSING or not positional:
            return expr
        expr = positional[0]
    return expr


def _iterations(ctx: FileContext) -> Iterator[tuple[cst.CSTNode, cst.BaseExpression]]:
    for loop in ctx.nodes.of(cst.For):
        yield loop, loop.iter
    for node in ctx.nodes.of(cst.Yield):
        if isinstance(node.value, cst.From):
            yield node, node.value.item


__all__ = ["DataLoading", "RepeatedIteration"]
