"""More than one process: torch.distributed, as torchrun starts it.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in each process it starts; without them (a plain
`python ...`) there is one process and nothing here starts a process group, and every collective
below returns its input unchanged.
"""
import os
from contextlib import contextmanager
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

    def shard(self, n):
        """This rank's rows of n (a slice): contiguous shares in rank order, so the ranks' shares laid
        side by side are the n rows in order. n must divide evenly (a global batch) or not (evaluation)."""
        bounds = [n * r // self.size for r in range(self.size + 1)]
        return slice(bounds[self.rank], bounds[self.rank + 1])

    def data_parallel(self, module, device):
        """`module` wrapped in DistributedDataParallel (its gradients averaged over the ranks) when there
        are several ranks; itself otherwise."""
        if self.size == 1:
            return module
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block first (and writes what it makes: the decoded pictures, ft's autoencoder);
        the others run it after, and find those files made."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def sum(self, x):
        """x summed over the ranks (in place; returned)."""
        if self.size > 1:
            torch.distributed.all_reduce(x)
        return x

    def min(self, x):
        """x's smallest value over the ranks (in place; returned)."""
        if self.size > 1:
            torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.MIN)
        return x

    def max(self, x):
        """x's largest value over the ranks (in place; returned)."""
        if self.size > 1:
            torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.MAX)
        return x

    def gather_objects(self, obj):
        """Every rank's `obj` (a picklable value), in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out

    def gather_rows(self, x):
        """The ranks' x (each a contiguous share of a batch) concatenated in rank order, with
        gradients: the gradient of a loss that every rank computes alike from the gathered rows flows
        back to each rank's own rows, summed over the ranks."""
        return x if self.size == 1 else _GatherRows.apply(x, self)

    def average_gradients(self, params):
        """Average the gradients of `params` over the ranks, in one flat buffer (the parameters that
        DistributedDataParallel does not hold: a method's own). Their gradients come from the same R on
        every rank, so this changes nothing where kernels are deterministic; it keeps the ranks' copies
        equal where they are not (some CUDA kernels)."""
        grads = [p.grad for p in params if p.grad is not None]
        if self.size == 1 or not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.size
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, world):
        ctx.world = world
        parts = [torch.empty_like(x) for _ in range(world.size)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        world = ctx.world
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad)
        return grad.chunk(world.size)[world.rank], None


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
