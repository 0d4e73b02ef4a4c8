"""What a run knows of its pre-trained models: their cached features of the rows it trains on (and
evaluates on, for a linear probe), read once from the feature cache, computed on the spot when a
cache is missing. Trainers and preparations get them from here instead of re-reading the files."""
import torch

from aft.datasets import subset_suffix
from aft.errors import UserError
from aft.extract import extract_to_cache
from aft.features import feature_path, read_features, save_features_command


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


def load_teachers(plan, task, train_rows, val_rows, keep_eval=False):
    """The TeacherFeatures of a run's plan; a missing cache is computed on the spot (as save_features.py
    would; under torchrun by all the processes, each its share of the rows).

    Teachers see images at their own input size (--teacher_image_size overrides it), never at the
    student's --image_size: a cache then serves any student, and one made at another size is refused.
    """
    cfg, world, device = plan.cfg, plan.world, plan.device
    size = cfg.teacher_image_size
    caches = []
    for teacher in plan.teachers:
        if not teacher.cached:
            print(f"features {teacher.cache} not found: computing them now (same as save_features.py)", flush=True)
            # Building the teacher draws random numbers (its weights are initialised before they are
            # loaded): on a forked RNG, so the student starts the same whether or not the cache existed.
            try:
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    extract_to_cache(teacher.spec, task, teacher.cache, cfg.extract_batch_size, device, cfg.precision,
                                     size or None, world=world)
                world.barrier()  # rank 0 has written the cache
            except UserError as e:
                command = save_features_command(teacher.name, task.name, cfg.features_dir, size)
                raise UserError(f"missing feature file {teacher.cache}, and computing it here failed: {e}; make it "
                                f"where the model loads with: {command} and copy it to {teacher.cache}") from None
        caches.append(read_features(teacher.cache, teacher.name, task.name, len(task.train), len(task.test),
                                    cfg.features_dir, image_size=size))
    return TeacherFeatures([t.name for t in plan.teachers], caches, train_rows, task.name, cfg.features_dir,
                           cfg.train_frac, cfg.use_val, val_rows, keep_eval)
