"""Datasets by name: each loader returns the canonical train and test splits.

The registry and the types are in aft.datasets.base; each family of datasets registers itself there
from its own module, imported below, with its modality, so a run's models are checked against it
before anything loads. Those modules import base and decode, never this package, so that none
imports one that imports it back.
"""
from aft.datasets.base import (DATASETS, VAL_FRAC, VAL_SPLIT_SEED, DatasetEntry, Split, Task, check_train_rows,
                               register_dataset, subset_suffix, tensor_product, train_eval_indices)
from aft.datasets import embedded, hf_text, snli_ve, torchvision_sets  # noqa: F401  (they register their sets)
from aft.datasets.decode import decode_size as default_decode_size

__all__ = ["Split", "Task", "DATASETS", "DatasetEntry", "register_dataset", "dataset_entry", "load_task",
           "train_eval_indices", "check_train_rows", "subset_suffix", "tensor_product", "VAL_SPLIT_SEED", "VAL_FRAC"]


def dataset_entry(name):
    """The registry's entry of dataset `name` (its name, modality and loader), without loading it."""
    return DATASETS.get(name)


def load_task(name, data_dir=None, decode_size=None):
    """Dataset `name`; pictures of varying size are decoded to squares of side `decode_size` (None:
    aft.datasets.decode.decode_size(), the default unless AFT_IMAGE_SIZE says otherwise)."""
    return dataset_entry(name).load(data_dir, decode_size or default_decode_size())
