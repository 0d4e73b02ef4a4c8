"""The feature cache: `features/{model}_{dataset}.pt`.

A cache is a plain dict of tensors and plain values, so it loads with `weights_only=True` (no
pickled code runs) and is written to a temporary file that is renamed into place, so a crash never
leaves a half-written file that a later run would read as valid.
"""
import hashlib
import os
import time

import torch

from aft.errors import UserError
from aft.files import atomic_save, exclusive, locked, safe_load
from aft.runtime import library_versions

DEFAULT_FEATURES_DIR = "./features"  # the paper's folder; every script's --features_dir default


LOCAL_FOLDER_PREFIXES = ("local-dir:", "timm:", "hf:")


def local_folder(model):
    """The real path of the local folder a model name gives (after a prefix, ~ expanded), or None."""
    path = model
    for prefix in LOCAL_FOLDER_PREFIXES:
        path = path.removeprefix(prefix)
    path = os.path.expanduser(path)
    return os.path.realpath(path) if os.path.isabs(path) or os.path.isdir(path) else None


def model_key(model):
    """What a model is: a local folder by its real path, however it was typed (`m`, `m/`, `../x/m`);
    any other model by its name."""
    folder = local_folder(model)
    return f"folder:{folder}" if folder else model


def cache_name(model):
    """The model's part of its cache file name. A model given as a local folder (an absolute or
    relative path) is named by the folder's own name and 8 hex digits of a hash of its real path, so
    its cache stays inside the features folder, the folder typed two ways shares it, and two folders of
    one name never do; any other name with '/' (Hugging Face ids) makes sub-folders, like the paper's
    cache."""
    folder = local_folder(model)
    if folder:
        return f"{os.path.basename(folder)}-{hashlib.sha256(folder.encode()).hexdigest()[:8]}"
    return model


def feature_path(features_dir, model, dataset):
    return os.path.join(features_dir, f"{cache_name(model)}_{dataset}.pt")


def save_features_command(model, dataset, features_dir=DEFAULT_FEATURES_DIR, image_size=0, flags=None):
    """The save_features.py command that makes `model`'s cache of `dataset` (its name in files; `flags`:
    how it is given on the command line, when not --dataset=NAME)."""
    size = f" --image_size={image_size}" if image_size else ""
    return (f"python save_features.py --model_class={model} {flags or f'--dataset={dataset}'} "
            f"--save_path={feature_path(features_dir, model, dataset)}{size}")


def _size_in_words(image_size):
    return f"{image_size} px" if image_size else "the model's own input size"


def make_meta(model, dataset, train, test, **extra):
    meta = dict(model=model, dataset=dataset, n_train=int(train.shape[0]), n_test=int(test.shape[0]),
                dim=int(train.shape[1]), dtype=str(train.dtype).replace("torch.", ""), **library_versions(),
                time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if local_folder(model):  # a local folder: the file is named by the folder, so keep where it was
        meta["model_path"] = local_folder(model)
    meta.update(extra)
    return meta


def cached_modality(path):
    """The modality recorded in the cache at `path` (its tensors are mapped, not read), or None when
    there is no such file or it records none."""
    if not os.path.exists(path):
        return None
    cache = safe_load(path, "feature file", mmap=True)
    return cache.get("meta", {}).get("modality") if isinstance(cache, dict) else None


def write_features(path, train, test, meta, val=None, present=None):
    """The cache at `path`: features of every row of each split (`val` when the dataset has a validation
    split of its own); `present` ({split: bool tensor}) marks the rows computed so far, when only some
    are (the others are zeros)."""
    with exclusive(path):  # not while logme.py writes back the old features with its scores
        save_cache(path, train, test, meta, val, present)


def save_cache(path, train, test, meta, val=None, present=None):
    """write_features without taking the cache's lock: for a caller that holds it (cache_lock)."""
    cache = {"train": train.contiguous(), "test": test.contiguous(), "meta": meta}
    if val is not None:
        cache["val"] = val.contiguous()
    if present:
        cache["present"] = {split: mask.contiguous() for split, mask in present.items()}
    atomic_save(cache, path)


def cache_lock(path):
    """The lock of the cache at `path` (a hidden `.NAME.lock` beside it), held while it is made,
    extended or scored, whether or not it exists yet; a process that waits says so."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return locked(os.path.join(folder, f".{name}.lock"), f"waiting for {path}: another process is making it")


def missing_rows(cache, split, rows):
    """The rows of `rows` (a LongTensor; None: all) of `split` that the cache lacks (all when it has
    no such split)."""
    if split not in cache:
        return rows
    rows = torch.arange(len(cache[split])) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    mask = cache.get("present", {}).get(split)
    return rows[:0] if mask is None else rows[~mask[rows]]


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
                  image_size=None, task=None, need=None, paper_pictures=None):
    """Load a cache and check it against what the caller trains on; any mismatch is a UserError.

    `image_size`: the input size the caller expects the model to have seen images at (0: its own; None:
    not checked). Text caches have none; one without the meta key (older ones) counts as 0. `task`: the
    aft.datasets.Task it must be of (its name, sizes, validation split and, for your own data, the
    fingerprint of its files), in place of `dataset`, `n_train` and `n_test`. `need`: {split: rows
    (a LongTensor, or None for all)} the caller reads, which the cache must hold (default: every row of
    train and test; a cache may hold only some rows, aft.extract). `paper_pictures`: whether the model
    must have read pictures decoded as the paper's code does (--paper_exact; None: not checked).
    """
    flags = None
    if task is not None:
        dataset, n_train, n_test, flags = task.name, len(task.train), len(task.test), task.flags
    command = save_features_command(model or "<model>", dataset or "<dataset>", features_dir, image_size, flags)
    if not os.path.exists(path):
        raise UserError(f"missing feature file {path}; create it with: {command}")
    # memory-mapped: only the rows read are read
    cache = safe_load(path, "feature file", mmap=True, fix=f"delete it and make it again with: {command}")
    if not isinstance(cache, dict) or not {"train", "test", "meta"} <= set(cache):
        raise UserError(f"{path} is not a feature file (needs keys train, test, meta); "
                        f"create it again with: {command}")
    meta = cache["meta"]
    redo = "; create it again with: " + save_features_command(
        model or meta.get("model"), dataset or meta.get("dataset"), features_dir, image_size, flags)
    made_by = f"folder:{os.path.realpath(meta['model_path'])}" if meta.get("model_path") else meta.get("model")
    if model is not None and meta.get("model") != model and made_by != model_key(model):
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
    if paper_pictures is not None and meta.get("modality") != "text" and bool(meta.get("paper_pictures")) != \
            paper_pictures:
        made, now = ("with", "not ") if meta.get("paper_pictures") else ("without", "")
        raise UserError(f"{path} holds features of pictures decoded {made} --paper_exact, and this run is {now}"
                        f"--paper_exact{redo}{' --paper_exact=True' if paper_pictures else ''}")
    if task is not None and task.fingerprint and meta.get("data_fingerprint") != task.fingerprint:
        raise UserError(f"{path} holds features of {dataset}'s files as they were at {meta.get('time')}; they have "
                        f"changed since{redo}")
    sizes = [("train", n_train), ("test", n_test)] + ([("val", len(task.val))] if task is not None and
                                                      task.val is not None else [])
    for split, n in sizes:
        rows = cache[split].shape[0] if split in cache else 0
        if n is not None and rows != n:
            raise UserError(f"{path} has {rows} {split} rows but dataset {dataset} has {n}{redo}")
    if cache["train"].shape[1] != cache["test"].shape[1]:
        raise UserError(f"{path} has train and test features of different widths{redo}")
    need = {"train": None, "test": None} if need is None else need
    for split, rows in need.items():
        lacking = missing_rows(cache, split, rows)
        if len(lacking):
            raise UserError(f"{path} holds features of some rows only, not of {len(lacking)} {split} rows this needs"
                            f"{redo}")
        values = cache[split] if rows is None else cache[split][rows]
        if not torch.isfinite(values).all():
            raise UserError(f"{path} has NaN or inf {split} features{redo}")
    return cache
