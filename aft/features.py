"""The feature cache: `features/{model}_{dataset}.pt`.

A cache is a plain dict of tensors and plain values, so it loads with `weights_only=True` (no
pickled code runs) and is written to a temporary file that is renamed into place, so a crash never
leaves a half-written file that a later run would read as valid.
"""
import os
import time

import torch

from aft.errors import UserError
from aft.files import atomic_save, exclusive, safe_load
from aft.runtime import library_versions

DEFAULT_FEATURES_DIR = "./features"  # the paper's folder; every script's --features_dir default


LOCAL_FOLDER_PREFIXES = ("local-dir:", "timm:", "hf:")


def cache_name(model):
    """The model's part of its cache file name. A model given as a local folder (an absolute or
    relative path) is named by the folder's own name, so its cache stays inside the features folder
    (the full path is in the cache's meta, and a folder of the same name elsewhere is refused there);
    any other name with '/' (Hugging Face ids) makes sub-folders, like the paper's cache."""
    path = model
    for prefix in LOCAL_FOLDER_PREFIXES:
        path = path.removeprefix(prefix)
    if os.path.isabs(path) or os.path.isdir(path):
        return os.path.basename(os.path.normpath(path))
    return model


def feature_path(features_dir, model, dataset):
    return os.path.join(features_dir, f"{cache_name(model)}_{dataset}.pt")


def save_features_command(model, dataset, features_dir=DEFAULT_FEATURES_DIR, image_size=0):
    size = f" --image_size={image_size}" if image_size else ""
    return (f"python save_features.py --model_class={model} --dataset={dataset} "
            f"--save_path={feature_path(features_dir, model, dataset)}{size}")


def _size_in_words(image_size):
    return f"{image_size} px" if image_size else "the model's own input size"


def make_meta(model, dataset, train, test, **extra):
    meta = dict(model=model, dataset=dataset, n_train=int(train.shape[0]), n_test=int(test.shape[0]),
                dim=int(train.shape[1]), dtype=str(train.dtype).replace("torch.", ""), **library_versions(),
                time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if cache_name(model) != model:  # a local folder: the file is named by the folder, so keep where it was
        meta["model_path"] = os.path.abspath(model.split(":", 1)[1] if model.startswith(LOCAL_FOLDER_PREFIXES) else model)
    meta.update(extra)
    return meta


def cached_modality(path):
    """The modality recorded in the cache at `path` (its tensors are mapped, not read), or None when
    there is no such file or it records none."""
    if not os.path.exists(path):
        return None
    cache = safe_load(path, "feature file", mmap=True)
    return cache.get("meta", {}).get("modality") if isinstance(cache, dict) else None


def write_features(path, train, test, meta):
    with exclusive(path):  # not while logme.py writes back the old features with its scores
        atomic_save({"train": train.contiguous(), "test": test.contiguous(), "meta": meta}, path)


def expected_features(model):
    """What `model`'s features are in words, where a cache must record it (aft.models.ModelSpec's
    describe_features); None for other models, and for a name no model here has (a cache made elsewhere)."""
    from aft.models import resolve_model
    try:
        spec = resolve_model(model)
    except UserError:
        return None
    return spec.describe_features() if spec.describe_features else None


def read_features(path, model=None, dataset=None, n_train=None, n_test=None, features_dir=DEFAULT_FEATURES_DIR,
                  image_size=None):
    """Load a cache and check it against what the caller trains on; any mismatch is a UserError.

    `image_size`: the input size the caller expects the model to have seen images at (0: its own; None:
    not checked). Text caches have none; one without the meta key (older ones) counts as 0.
    """
    if not os.path.exists(path):
        command = save_features_command(model or "<model>", dataset or "<dataset>", features_dir, image_size)
        raise UserError(f"missing feature file {path}; create it with: {command}")
    cache = safe_load(path, "feature file")
    if not isinstance(cache, dict) or not {"train", "test", "meta"} <= set(cache):
        raise UserError(f"{path} is not a feature file (needs keys train, test, meta); "
                        f"create it again with save_features.py")
    meta = cache["meta"]
    redo = "; create it again with: " + save_features_command(
        model or meta.get("model"), dataset or meta.get("dataset"), features_dir, image_size)
    if model is not None and meta.get("model") != model:
        raise UserError(f"{path} holds features of model {meta.get('model')!r}, not {model!r}{redo}")
    if dataset is not None and meta.get("dataset") != dataset:
        raise UserError(f"{path} holds features of dataset {meta.get('dataset')!r}, not {dataset!r}{redo}")
    expected = expected_features(model) if model is not None else None
    if expected and meta.get("features") != expected:
        made = meta.get("features") or "older code made them (a sentence-transformers model pooled by its family's head)"
        raise UserError(f"{path} holds features of {model} made as {made}, not as its {expected}{redo}")
    made_at = meta.get("image_size") or 0
    if image_size is not None and meta.get("modality") != "text" and made_at != image_size:
        raise UserError(f"{path} holds features of images at {_size_in_words(made_at)}, but this run expects "
                        f"{_size_in_words(image_size)} (--teacher_image_size={image_size}); use it with "
                        f"--teacher_image_size={made_at}, or{redo[1:]}")
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
