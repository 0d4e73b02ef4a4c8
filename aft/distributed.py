"""More than one process: torch.distributed, as torchrun starts it.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in each process it starts; without them (a plain
`python ...`) there is one process and nothing here starts a process group.
"""
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0

    def device(self, device):
        """Each rank's own GPU (cuda:LOCAL_RANK) when `device` is CUDA and there are several ranks."""
        if self.size > 1 and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self):
        if self.size > 1:
            torch.distributed.barrier()


SINGLE = World()


def from_environment():
    """The World torchrun's variables describe; one process without them."""
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def start(world, device):
    """Join the process group of `world` (from torchrun's variables): gloo on the CPU, nccl on CUDA,
    where `device` is this rank's own GPU. One process starts nothing."""
    if world.size == 1:
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                         **({"device_id": device} if device.type == "cuda" else {}))


def stop(world):
    if world.size > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
