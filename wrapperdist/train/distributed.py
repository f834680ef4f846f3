"""What a training stage needs to know about data parallelism, without knowing who provides it:
its rank, the world size and how to wrap the model (DDP under Ray Train; identity in-process)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn


def _identity(model: nn.Module) -> nn.Module:
    return model


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    wrap: Callable[[nn.Module], nn.Module] = field(default=_identity)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, global_batch: int) -> int:
        """Per-worker batch so that the global batch (what the config means) stays the same."""
        if global_batch % self.world_size:
            raise ValueError(f"batch_size {global_batch} is not divisible by {self.world_size} workers")
        return global_batch // self.world_size


IN_PROCESS = Distributed()
