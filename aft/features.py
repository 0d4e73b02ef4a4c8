"""The feature cache: `features/{model}_{dataset}.pt` (SPEC 5).

A cache is a plain dict of tensors and plain values, so it loads with `weights_only=True` (no
pickled code runs) and is written to a temporary file that is renamed into place, so a crash never
leaves a half-written file that a later run would read as valid.
"""
import os
import re
import tempfile
import time

import torch

from aft.errors import UserError


def feature_path(features_dir, model, dataset):
    # A model name with '/' (Hugging Face ids) makes sub-folders, as SPEC 5 says.
    return os.path.join(features_dir, f"{model}_{dataset}.pt")


def save_features_command(model, dataset, features_dir="./features"):
    return (f"python save_features.py --model_class={model} --dataset={dataset} "
            f"--save_path={feature_path(features_dir, model, dataset)}")


def atomic_save(obj, path):
    """torch.save to a temporary file beside `path`, fsync, then rename over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a cache is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    remove_stale_temps(folder)


STALE_TEMP_SECONDS = 3600


def remove_stale_temps(folder):
    """A kill -9 mid-write leaves a `.tmp-*.pt` beside the target. Nothing ever reads one (the target
    name is only ever made by the rename), and one unmodified for an hour is no longer being written
    by anyone, so it is deleted here to give the disk space back."""
    now = time.time()
    for name in os.listdir(folder):
        if name.startswith(".tmp-") and name.endswith(".pt"):
            stale = os.path.join(folder, name)
            try:
                if now - os.path.getmtime(stale) > STALE_TEMP_SECONDS:
                    os.remove(stale)
            except OSError:
                pass  # another process removed it first


def safe_load(path, what="file"):
    """torch.load with weights_only=True; a corrupt, truncated or code-carrying file is a UserError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises several types for a bad archive or a refused pickle
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable {what} ({first}); delete it and create it again")


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


def read_features(path, model=None, dataset=None, n_train=None, n_test=None, features_dir="./features"):
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
