"""What a run knows of its pre-trained models: their cached features of the rows it trains on (and
evaluates on, for a linear probe), read once from the feature cache, computed on the spot when a
cache is missing. Trainers and preparations get them from here instead of re-reading the files."""
import os

import torch

from aft.datasets import load_entry, subset_suffix
from aft.datasets.decode import decoding_for
from aft.errors import UserError
from aft.extract import extract_to_cache
from aft.features import feature_path, missing_rows, read_features, save_features_command
from aft.models import resolve_model
from aft.prepare import PREPARATIONS


class TeacherFeatures:
    """Each pre-trained model's cached features of the train rows (host tensors, in the run's row
    order), the LogME entries of its file, and where files derived from them belong.

    `holds_out`: the evaluated rows are held out of the train split (--use_val without a validation
    split of the dataset's own); `eval_split`: only for a linear probe, which reads the teachers'
    features of the evaluated rows: "test", "val" (the dataset's own) or "held_out" (`val_rows`);
    `flags`: the dataset on a command line, for the commands an error prints."""

    def __init__(self, names, caches, train_rows, dataset, features_dir, train_frac, holds_out, val_rows=None,
                 eval_split=None, flags=None):
        self.names, self.dataset, self.features_dir, self.flags = list(names), dataset, features_dir, flags
        self.caches = caches  # the whole caches (memory-mapped): a preparation may read beyond the run's rows
        self.train_frac, self.use_val = train_frac, holds_out
        self.train = [c["train"][train_rows] for c in caches]
        self.dims = [t.shape[1] for t in self.train]
        self.n_source = caches[0]["train"].shape[0] if caches else 0  # rows of the dataset's train split
        self.eval = None if eval_split is None else \
            [c["train"][val_rows] if eval_split == "held_out" else c[eval_split] for c in caches]
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
                             features_dir=self.features_dir, need={"train": None})


def rows_needed(train_rows, val_rows, eval_split):
    """{split: rows} of the teachers' features a run reads: its train rows, and a linear probe's
    evaluated rows too."""
    need = {"train": train_rows}
    if eval_split == "held_out":
        need["train"] = torch.cat([train_rows, val_rows]).sort().values
    elif eval_split is not None:
        need[eval_split] = None
    return need


def load_teachers(plan, task, train_rows, val_rows, eval_split=None):
    """The TeacherFeatures of a run's plan (`eval_split`: see TeacherFeatures). A missing cache, or the
    rows a cache lacks, are computed on the spot, as save_features.py would (under torchrun by all the
    processes, each its share of the rows); only the rows this run reads are computed.

    Teachers see images at their own input size (--teacher_image_size overrides it), never at the
    student's --image_size: a cache then serves any student, and one made at another size is refused.
    """
    cfg, world, device = plan.cfg, plan.world, plan.device
    size = cfg.teacher_image_size
    need = rows_needed(train_rows, val_rows, eval_split)
    preparation = plan.method.preparation and PREPARATIONS.get(plan.method.preparation)
    if cfg.paper_exact and preparation and preparation.paper_reads_all_rows:
        need = {"train": None, "test": None, **{k: v for k, v in need.items() if k not in ("train", "test")}}
    caches = []
    # Under --paper_exact a teacher's cache must be of pictures decoded as the paper's code does (and
    # without, not): where the pictures are decoded per model.
    paper_pictures = cfg.paper_exact if plan.per_model_pictures else None
    tasks = {plan.decode_size: task}  # the dataset with its pictures decoded for each model that needs them
    for teacher in plan.teachers:
        lacking = 0
        if os.path.exists(teacher.cache):  # refused when made otherwise; else, maybe some rows are not there yet
            cache = read_features(teacher.cache, teacher.name, features_dir=cfg.features_dir, image_size=size,
                                  task=task, need={}, paper_pictures=paper_pictures)
            lacking = sum(len(missing_rows(cache, split, rows)) for split, rows in need.items())
            if lacking:
                print(f"features {teacher.cache} lack {lacking} rows this run reads: computing them now", flush=True)
        else:
            print(f"features {teacher.cache} not found: computing them now (same as save_features.py)", flush=True)
        if lacking or not os.path.exists(teacher.cache):
            # Building the teacher draws random numbers (its weights are initialised before they are
            # loaded): on a forked RNG, so the student starts the same whether or not the cache existed.
            spec = teacher.spec or resolve_model(teacher.name)
            decoding = decoding_for(spec, size, cfg.paper_exact) if plan.per_model_pictures else plan.decode_size
            if decoding != plan.decode_size and decoding not in tasks:  # the teacher sees the pictures decoded for
                with world.main_first():  # it, as save_features.py would; rank 0 decodes them once, the others read
                    tasks[decoding] = load_entry(plan.dataset, cfg.data_dir or None, decoding)
            try:
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    extract_to_cache(spec, tasks[decoding], teacher.cache, cfg.extract_batch_size, device,
                                     cfg.precision, size or None, world=world, need=need)
                world.barrier()  # rank 0 has written the cache
            except UserError as e:
                command = save_features_command(teacher.name, task.name, cfg.features_dir, size, task.flags)
                raise UserError(f"missing feature file {teacher.cache}, and computing it here failed: {e}; make it "
                                f"where the model loads with: {command} and copy it to {teacher.cache}") from None
        caches.append(read_features(teacher.cache, teacher.name, features_dir=cfg.features_dir, image_size=size,
                                    task=task, need=need, paper_pictures=paper_pictures))
    return TeacherFeatures([t.name for t in plan.teachers], caches, train_rows, task.name, cfg.features_dir,
                           cfg.train_frac, plan.holds_out, val_rows, eval_split, task.flags)
