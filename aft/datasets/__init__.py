"""Datasets by name: each loader returns the canonical train and test splits.

The registry and the types are in aft.datasets.base; each family of datasets registers itself there
from its own module, imported below, with its modality, so a run's models are checked against it
before anything loads. Those modules import base and decode, never this package, so that none
imports one that imports it back.
"""
import dataclasses

from aft.datasets.base import (DATASETS, VAL_FRAC, VAL_SPLIT_SEED, DatasetEntry, Split, Task, check_train_rows,
                               register_dataset, subset_suffix, tensor_product, train_eval_indices)
from aft.datasets import embedded, hf_text, snli_ve, torchvision_sets  # noqa: F401  (they register their sets)
from aft.datasets import own  # noqa: F401  (the rules for your own data: folders, tables, Hugging Face datasets)
from aft.datasets.base import DataOptions
from aft.datasets.decode import as_decoding, decode_size as default_decode_size

__all__ = ["Split", "Task", "DATASETS", "DataOptions", "DatasetEntry", "register_dataset", "dataset_entry", "load_task",
           "load_entry",
           "train_eval_indices", "check_train_rows", "subset_suffix", "tensor_product", "VAL_SPLIT_SEED", "VAL_FRAC"]


def dataset_entry(name, options=DataOptions()):
    """The entry of dataset `name` (its name, modality and loader), without loading it: a registered
    dataset, or your own data read as `options` (an aft.datasets.DataOptions) say."""
    return DATASETS.get(name).resolve(name, options)


def load_task(name, data_dir=None, decode_size=None, options=DataOptions()):
    """Dataset `name` (see dataset_entry); pictures of varying size are decoded to squares of side
    `decode_size` (None: aft.datasets.decode.decode_size(), the default unless AFT_IMAGE_SIZE says
    otherwise)."""
    return load_entry(dataset_entry(name, options), data_dir, decode_size)


def load_entry(entry, data_dir=None, decode=None, pictures=True):
    """The Task of a dataset's entry (dataset_entry); its pictures of varying size decoded as `decode`
    says (an aft.datasets.decode.Decoding, or the side of the squares; None: the default side).
    pictures=False: your own data's pictures are not decoded (their inputs are None), for a reader of
    the labels alone (logme.py)."""
    decoding = as_decoding(0 if not pictures and entry.given else decode or default_decode_size())
    task = entry.load(data_dir, decoding)
    return dataclasses.replace(task, fingerprint=entry.fingerprint, flags=entry.flags,
                               model_ready=bool(task.decoded_size) and decoding.model_ready)
