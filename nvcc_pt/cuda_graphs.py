"""Replaying a compiled model's forward from CUDA graphs.

A forward of a small model on a GPU is bound by the host: hundreds of kernel launches, each a
few microseconds of Python and driver work, for kernels that run for less. A CUDA graph
records the launches once and replays them with one call. `GraphCache` keeps one graph per
key: the input signature (shapes, dtypes) and where the programmed state lives (re-programming
writes into the same buffers, so it keeps its graphs; stacking Monte Carlo instances or moving
the model records anew), with static input buffers the call's inputs are copied into.

The simulator's NaN/inf checks are queued inside the graph (`queued_checks`): the replay copies
the queued values (per-token scales) to pinned host memory and they are checked there after
each replay, so a bad input still raises `InputError` naming the op that saw it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch.utils._pytree import tree_map

from nvcc_pt.targets.simulator import check_values, deferred_checks, queued_checks, queued_values


def _clone(value):
    return value.clone() if isinstance(value, torch.Tensor) else value


class GraphCache:
    """CUDA graphs of one forward function, least recently used first out beyond `capacity`.

    A key is recorded on its second call, so an input shape used once costs no recording.
    Re-programming keeps the key (the state is rewritten in place, and a regenerated chip's seeds
    are read on the GPU), so Monte Carlo's chips, one call each, replay one graph.
    """

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self._entries: OrderedDict[tuple, tuple] = OrderedDict()
        self._seen: set[tuple] = set()

    def clear(self) -> None:
        """Forget every graph: the state they read from has moved or been replaced."""
        self._entries.clear()
        self._seen.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def run(self, forward: Callable, args: tuple[torch.Tensor, ...], key: tuple,
            kept: Callable[[], AbstractContextManager] = nullcontext):
        """`forward(*args)`, replayed from the key's graph where one is recorded. `kept()` puts the model's noise
        counters back after the recording's warm-up call, so that the recorded call draws what an eager one would."""
        entry = self._entries.get(key)
        if entry is None:
            if key not in self._seen:
                self._seen.add(key)
                with deferred_checks():
                    return forward(*args)
            entry = self._entries[key] = self._record(forward, args, kept)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        graph, inputs, output, queued, values = entry
        for buffer, arg in zip(inputs, args):
            buffer.copy_(arg)
        graph.replay()
        result = output.clone() if isinstance(output, torch.Tensor) else tree_map(_clone, output)
        if queued:
            torch.cuda.current_stream().synchronize()
            check_values(queued, values.numpy())
        return result

    @staticmethod
    def _record(forward: Callable, args: tuple[torch.Tensor, ...], kept: Callable[[], AbstractContextManager]) -> tuple:
        inputs = [a.clone() for a in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), deferred_checks(), kept():  # warm-up: lazy initialization, kernel tuning,
            forward(*inputs)  # input checks
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with queued_checks() as queued, torch.cuda.graph(graph):
            output = forward(*inputs)
            values = queued_values(queued)
            if values is not None:  # the replay leaves them in pinned host memory, checked there: no kernel
                host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
                host.copy_(values, non_blocking=True)
        return graph, inputs, output, list(queued), host if queued else None
