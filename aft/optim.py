"""The optimizer, the learning-rate schedule and the batches of each epoch, which every trainer and the
loop share: this tool's (equal batches reshuffled every epoch, a cosine stepped every step) or, with
--paper_exact, the paper's code's (a cosine stepped once per epoch over whole epochs, the short last
batch kept, and one fixed list of batches when there are at most 100)."""
import math
from dataclasses import dataclass

import torch

PAPER_FIXED_BATCHES = 100  # the paper's code froze its batches when an epoch had at most this many (no_augment)


def make_optimizer(groups, optimizer, lr, wd, device):
    """Adam or SGD (momentum 0.9) over parameter groups; groups without their own lr/wd take `lr`, `wd`."""
    fused = {"fused": True} if device.type == "cuda" else {}
    if optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=wd, **fused)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=wd, **fused)


def cosine_schedule(optimizer, steps):
    """Cosine from each group's lr to 0 over `steps` steps, stepped every step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def epoch_cosine_schedule(optimizer, per_epoch, epochs):
    """The paper's CosineAnnealingLR(T_max=epochs) stepped once per epoch, as a schedule stepped every
    step: the lr of a step is that of its epoch."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s // per_epoch, epochs) / epochs)))


def batch_rows(batch_size, n):
    """The rows of one global batch: --batch_size, or all n train rows when there are fewer."""
    return min(batch_size, n)


def epoch_batches(n, batch_size, seed, epoch):
    """The batches of one epoch: a fresh shuffle per epoch, derived from (seed, epoch) so a resumed
    run sees exactly the batches the uninterrupted run would have."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    size = batch_rows(batch_size, n)
    return list(perm[: n - n % size].split(size))  # equal-size batches: no ragged last step


@dataclass(frozen=True)
class Batching:
    """The batches and the schedule of a run of `steps` steps over n train rows."""
    n: int
    batch_size: int
    seed: int
    paper: bool = False  # the paper's code's batches and schedule (--paper_exact)
    fixed: bool = False  # the paper's one list of batches for every epoch (no augmentation)
    steps_asked: int = 1

    @property
    def per_epoch(self):
        if self.paper:
            return math.ceil(self.n / self.batch_size)  # the short last batch kept
        return max(1, self.n // batch_rows(self.batch_size, self.n))

    @property
    def epochs(self):
        """The paper's whole epochs: steps / batches per epoch, rounded (at least one)."""
        return max(1, int(self.steps_asked / self.per_epoch + 0.5))

    @property
    def steps(self):
        return self.epochs * self.per_epoch if self.paper else self.steps_asked

    def batches(self, epoch):
        if not self.paper:
            return epoch_batches(self.n, self.batch_size, self.seed, epoch)
        fixed = self.fixed and self.per_epoch <= PAPER_FIXED_BATCHES
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + (0 if fixed else epoch))
        return list(torch.randperm(self.n, generator=g).split(self.batch_size))

    def schedule(self, optimizer):
        if self.paper:
            return epoch_cosine_schedule(optimizer, self.per_epoch, self.epochs)
        return cosine_schedule(optimizer, self.steps)


def batching(cfg, n_train, multiplier, augments):
    """The Batching of a run (`multiplier`: 4 on mnli, qqp and qnli, as the paper's code)."""
    return Batching(n_train, cfg.batch_size, cfg.seed, cfg.paper_exact, not augments, cfg.steps * multiplier)
