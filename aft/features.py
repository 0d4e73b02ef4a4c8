"""The feature cache: `features/{model}_{dataset}.pt`.

A cache is a plain dict of tensors and plain values, so it loads with `weights_only=True` (no
pickled code runs) and is written to a temporary file that is renamed into place, so a crash never
leaves a half-written file that a later run would read as valid.
"""
import os
import time

import torch

from aft.errors import UserError
from aft.files import atomic_save, safe_load

DEFAULT_FEATURES_DIR = "./features"  # the paper's folder; every script's --features_dir default


def feature_path(features_dir, model, dataset):
    # A model name with '/' (Hugging Face ids) makes sub-folders, like the paper's cache.
    return os.path.join(features_dir, f"{model}_{dataset}.pt")


def save_features_command(model, dataset, features_dir=DEFAULT_FEATURES_DIR):
    return (f"python save_features.py --model_class={model} --dataset={dataset} "
            f"--save_path={feature_path(features_dir, model, dataset)}")


def make_meta(model, dataset, train, test, **extra):
    import numpy
    import transformers
    import timm
    meta = dict(model=model, dataset=dataset, n_train=int(train.shape[0]), n_test=int(test.shape[0]),
                dim=int(train.shape[1]), dtype=str(train.dtype).replace("torch.", ""),
                torch=str(torch.__version__), timm=timm.__version__, transformers=transformers.__version__,
                numpy=numpy.__version__, time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    meta.update(extra)
    return meta


def write_features(path, train, test, meta):
    atomic_save({"train": train.contiguous(), "test": test.contiguous(), "meta": meta}, path)


def read_features(path, model=None, dataset=None, n_train=None, n_test=None, features_dir=DEFAULT_FEATURES_DIR):
    """Load a cache and check it against what the caller trains on; any mismatch is a UserError."""
    if not os.path.exists(path):
        raise UserError(f"missing feature file {path}; create it with: "
                        f"{save_features_command(model or '<model>', dataset or '<dataset>', features_dir)}")
    cache = safe_load(path, "feature file")
    if not isinstance(cache, dict) or not {"train", "test", "meta"} <= set(cache):
        raise UserError(f"{path} is not a feature file (needs keys train, test, meta); "
                        f"create it again with save_features.py")
    meta = cache["meta"]
    redo = f"; create it again with: {save_features_command(model or meta.get('model'), dataset or meta.get('dataset'), features_dir)}"
    if model is not None and meta.get("model") != model:
        raise UserError(f"{path} holds features of model {meta.get('model')!r}, not {model!r}{redo}")
    if dataset is not None and meta.get("dataset") != dataset:
        raise UserError(f"{path} holds features of dataset {meta.get('dataset')!r}, not {dataset!r}{redo}")
    for split, n in (("train", n_train), ("test", n_test)):
        rows = cache[split].shape[0]
        if n is not None and rows != n:
            raise UserError(f"{path} has {rows} {split} rows but dataset {dataset} has {n}{redo}")
    if cache["train"].shape[1] != cache["test"].shape[1]:
        raise UserError(f"{path} has train and test features of different widths{redo}")
    for split in ("train", "test"):
        if not torch.isfinite(cache[split]).all():
            raise UserError(f"{path} has NaN or inf {split} features{redo}")
    return cache
