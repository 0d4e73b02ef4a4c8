"""What a run knows of its pre-trained models: their cached features of the rows it trains on (and
evaluates on, for a linear probe), read once from the feature cache, computed on the spot when a
cache is missing. Methods get them in `start()` instead of re-reading the files themselves."""
import os
from dataclasses import dataclass
from typing import Callable

import torch

from aft.datasets import subset_suffix
from aft.distributed import SINGLE
from aft.errors import UserError
from aft.features import feature_path, read_features, save_features_command


@dataclass
class Student:
    """The downstream model as a method sees it before the first step."""
    name: str
    pretrained: bool
    features: Callable[[], torch.Tensor]  # its features of the train rows now (computed when called)


class TeacherFeatures:
    """Each pre-trained model's cached features of the train rows (host tensors, in the run's row
    order), the LogME entries of its file, and where files derived from them belong."""

    def __init__(self, names, caches, train_rows, dataset, features_dir, train_frac, use_val, val_rows=None,
                 keep_eval=False):
        self.names, self.dataset, self.features_dir = list(names), dataset, features_dir
        self.train_frac, self.use_val = train_frac, use_val
        self.train = [c["train"][train_rows] for c in caches]
        self.dims = [t.shape[1] for t in self.train]
        self.n_source = caches[0]["train"].shape[0] if caches else 0  # rows of the dataset's train split
        # Only a linear probe reads the teachers' features of the evaluated rows: the held-out train
        # rows with use_val, else the test split.
        self.eval = None if not keep_eval else [c["test"] if val_rows is None else c["train"][val_rows] for c in caches]
        self.logme_entries = [{k: v for k, v in c.items() if k.startswith("logme_")} for c in caches]

    @property
    def suffix(self):
        """Names the rows trained on, in files and keys derived from them (a subset, the val hold-out)."""
        return subset_suffix(self.train_frac, self.use_val)

    def derived_path(self, model, tag):
        """{features_dir}/{model}_{dataset}.{tag}{suffix}.pt: a file computed from `model`'s features of
        these rows (factor transfer's autoencoder)."""
        return feature_path(self.features_dir, model, self.dataset)[: -len(".pt")] + f".{tag}{self.suffix}.pt"

    def cache_of(self, model):
        """The whole cache file of `model` on this dataset (for a model that is not a teacher: the
        downstream model's own pre-trained features, which B-Tuning reads)."""
        return read_features(feature_path(self.features_dir, model, self.dataset), model, self.dataset,
                             features_dir=self.features_dir)


def uncached_teachers(cfg):
    """The teachers of a run whose feature cache is not there yet: load_teachers computes them."""
    return [m for m in cfg.teacher_names if not os.path.exists(feature_path(cfg.features_dir, m, cfg.dataset))]


def load_teachers(cfg, task, train_rows, val_rows, device, keep_eval=False, world=SINGLE):
    """The TeacherFeatures of a run; a missing cache is computed on the spot (as save_features.py would;
    under torchrun by all the processes, each its share of the rows).

    Teachers see images at their own input size (--teacher_image_size overrides it), never at the
    student's --image_size: a cache then serves any student, and one made at another size is refused.
    """
    from aft.extract import extract_to_cache
    size = cfg.teacher_image_size
    missing = world.gather_objects(uncached_teachers(cfg))[0]  # rank 0's view: every rank then does the same
    caches = []
    for name in cfg.teacher_names:
        path = feature_path(cfg.features_dir, name, task.name)
        if name in missing:
            print(f"features {path} not found: computing them now (same as save_features.py)", flush=True)
            # Building the teacher draws random numbers (its weights are initialised before they are
            # loaded): on a forked RNG, so the student starts the same whether or not the cache existed.
            try:
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    extract_to_cache(name, task, path, cfg.extract_batch_size, device, cfg.precision, size or None,
                                     world=world)
                world.barrier()  # rank 0 has written the cache
            except UserError as e:
                command = save_features_command(name, task.name, cfg.features_dir, size)
                raise UserError(f"missing feature file {path}, and computing it here failed: {e}; make it where "
                                f"the model loads with: {command} "
                                f"and copy it to {path}") from None
        caches.append(read_features(path, name, task.name, len(task.train), len(task.test), cfg.features_dir,
                                    image_size=size))
    return TeacherFeatures(cfg.teacher_names, caches, train_rows, task.name, cfg.features_dir, cfg.train_frac,
                           cfg.use_val, val_rows, keep_eval)
