"""Datasets by name: each loader returns the canonical train and test splits.

The registry and the types are in aft.datasets.base; each family of datasets registers itself there
from its own module, imported below, with its modality, so a run's models are checked against it
before anything loads. Those modules import base and decode, never this package, so that none
imports one that imports it back.
"""
from aft.datasets.base import (DATASETS, VAL_FRAC, VAL_SPLIT_SEED, DatasetEntry, Split, Task, check_train_rows,
                               register_dataset, subset_suffix, train_eval_indices)
from aft.datasets import embedded, hf_text, snli_ve, torchvision_sets  # noqa: F401  (they register their sets)
from aft.errors import UserError

__all__ = ["Split", "Task", "DATASETS", "DatasetEntry", "register_dataset", "dataset_entry", "load_task",
           "train_eval_indices", "check_train_rows", "subset_suffix", "VAL_SPLIT_SEED", "VAL_FRAC"]


def dataset_entry(name):
    """The registry's entry of dataset `name` (its name, modality and loader), without loading it."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def load_task(name, data_dir=None):
    return dataset_entry(name).load(data_dir)
