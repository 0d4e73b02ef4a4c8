"""The dataset registry and the types every loader returns, with the split helpers that depend only
on a split's size.

A loader returns raw inputs (a list of strings, a uint8 image tensor N x C x H x W with square
images, or an aft.inputs.ImageText of pictures + texts) and int64 labels, row i being example i of
the canonical split order: the feature cache relies on that order. Tokenising and resizing to a
model's size belong to the model (aft.inputs), not to the dataset.
"""
from dataclasses import dataclass, field

import torch

from aft.errors import UserError

VAL_SPLIT_SEED = 42  # the paper's fixed seed for the 10% validation hold-out
VAL_FRAC = 0.1


@dataclass
class Split:
    inputs: object  # list[str] for text, uint8 tensor (N, C, H, W) for images
    labels: torch.Tensor

    def __len__(self):
        return len(self.labels)

    def subset(self, idx):
        inputs = [self.inputs[i] for i in idx.tolist()] if isinstance(self.inputs, list) else self.inputs[idx]
        return Split(inputs, self.labels[idx])


@dataclass
class Task:
    name: str
    modality: str  # "text", "image", or "image_text" (snli-ve: a picture and a hypothesis)
    num_classes: int
    train: Split
    test: Split
    truncation_side: str = "right"  # which end of a too-long text the tokenizer cuts (the paper code's, per set)
    step_multiplier: int = 1  # the paper runs 4x the steps on mnli, qqp, qnli
    class_names: list = field(default_factory=list)


DATASETS = {}


def register_dataset(name):
    def wrap(fn):
        DATASETS[name] = fn
        return fn
    return wrap


def train_eval_indices(n_train, train_frac, use_val):
    """Rows of the canonical train split to train on, and the held-out rows to evaluate on (or None).

    The validation rows are a fixed 10% (seed 42) so every seed and beta of a sweep is scored on
    the same examples; `train_frac` then keeps a fixed fraction of the remaining rows.
    """
    if not 0 < train_frac <= 1:
        raise UserError(f"--train_frac={train_frac} must be in (0, 1]")
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    val = None
    if use_val:
        n_val = max(1, int(round(VAL_FRAC * n_train)))
        val, perm = perm[:n_val].sort().values, perm[n_val:]
    keep = max(1, int(round(train_frac * len(perm))))
    return perm[:keep].sort().values, val


def subset_suffix(train_frac, use_val):
    """The suffix of the files and keys computed from the rows train_eval_indices picks, so results
    from different training rows never overwrite or stand in for one another."""
    return ("" if train_frac == 1 else f"_train_frac={train_frac}") + ("_val" if use_val else "")
