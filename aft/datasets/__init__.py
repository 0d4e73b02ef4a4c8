"""Datasets by name: each loader returns the canonical train and test splits.

The registry and the types are in aft.datasets.base; each family of datasets registers itself there
from its own module, imported below. Those modules import base and decode, never this package, so
that none imports one that imports it back.
"""
from aft.datasets.base import (DATASETS, VAL_FRAC, VAL_SPLIT_SEED, Split, Task, register_dataset, subset_suffix,
                               train_eval_indices)
from aft.datasets import embedded, hf_text, snli_ve, torchvision_sets  # noqa: F401  (they register their sets)
from aft.errors import UserError

__all__ = ["Split", "Task", "DATASETS", "register_dataset", "load_task", "train_eval_indices", "subset_suffix",
           "VAL_SPLIT_SEED", "VAL_FRAC"]


def load_task(name, data_dir=None):
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](data_dir)
