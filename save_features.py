r"""Cache a pre-trained model's features of a dataset's train and test splits.

    python save_features.py --model_class=all-MiniLM-L6-v2 --dataset=tweets
    python save_features.py --model_class=vit_giant_patch14_dinov2.lvd142m --dataset=cifar10 \
        --save_path=./features/vit_giant_patch14_dinov2.lvd142m_cifar10.pt
    python save_features.py --model_class=efficientnet_lite2 --dataset=digits --debug   # a try, nothing saved
    torchrun --nproc_per_node=4 save_features.py --model_class=... --dataset=...   # the rows over 4 GPUs
    python save_features.py --model_class=meta-llama/Llama-2-7b-hf --dataset=boolq --device_map=auto

The file is written atomically; run.py finds it at {features_dir}/{model_class}_{dataset}.pt. The
features are saved in chunks on the way (in {cache}.parts/), so a killed extraction started again,
with any number of processes, computes only the chunks it lacks.
"""
import dataclasses
import os
import tempfile

import torch
from absl import flags

from aft import cli, distributed
from aft.datasets import dataset_entry, load_entry
from aft.datasets.decode import decoding_for
from aft.errors import UserError, check_bounds, main_guard
from aft.extract import CHUNK_ROWS, check_device_map, extract_to_cache
from aft.features import DEFAULT_FEATURES_DIR, feature_path, read_features
from aft.models import resolve_model
from aft.runtime import resolve_device

BOUNDS = {"batch_size": "> 0", "num_workers": ">= 0", "image_size": ">= 0", "chunk_rows": "> 0"}

cli.define(cli.PAPER, "model_class", "all-MiniLM-L6-v2",
           "pre-trained model: timm name, Hugging Face id or folder, or an embedded one")
cli.define(cli.PAPER, "dataset", "tweets", cli.DATASET_HELP)
cli.define_data_flags()
cli.define(cli.PAPER, "save_path", "", "output file (default {features_dir}/{model_class}_{dataset}.pt)")
cli.define(cli.PAPER, "batch_size", 256, "inference batch size", bound=BOUNDS["batch_size"])
cli.define(cli.PAPER, "num_workers", 0, "CPU cores used, to decode images and to run the model on the CPU (0: all "
           "this process may use; in the paper's code, data-loading processes)", bound=BOUNDS["num_workers"])
cli.define(cli.PAPER, "debug", False, "a quick try: one batch of each split through the model, its feature width "
           "printed, nothing saved")
cli.define(cli.TOOL, "features_dir", DEFAULT_FEATURES_DIR, "folder of the feature cache")
cli.define(cli.TOOL, "data_dir", "", "folder of datasets on disk")
cli.define(cli.TOOL, "device", "auto", "auto, cpu, cuda, cuda:N")
cli.define(cli.TOOL, "precision", "auto", "auto: bf16 on CUDA, fp32 on CPU", ["auto", "bf16", "fp32"])
cli.define(cli.TOOL, "image_size", 0, "image input size (0: the model's own)", bound=BOUNDS["image_size"])
cli.define(cli.TOOL, "chunk_rows", CHUNK_ROWS, "rows per chunk file saved on the way, which a restart reuses "
           "(a restart with another value computes every chunk again)", bound=BOUNDS["chunk_rows"])
cli.define(cli.TOOL, "paper_exact", False, "decode each picture as the paper's code does, through timm's own eval "
           "transform (for run.py --paper_exact); the features are the same otherwise")
cli.define(cli.TOOL, "keep_existing", False, "keep the cache when it holds every row of this model and dataset "
           "(made at this --image_size); make it only when it does not")
cli.define(cli.TOOL, "device_map", "none", "auto: a Hugging Face model spread over this process's GPUs by "
           "accelerate, for one larger than a GPU; none: the whole model on --device", ["none", "auto"])
FLAGS = flags.FLAGS


def use_cores(n):
    """Let this process use `n` of the CPU cores it may use (0: all of them). Image decoding runs
    one thread per core it may use (aft.datasets.decode.workers), so that limit is set where the OS
    offers one (Linux); torch's CPU threads follow it."""
    if n == 0:
        return
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])
        n = len(os.sched_getaffinity(0))
    torch.set_num_threads(n)


def device_map():
    return None if FLAGS.device_map == "none" else FLAGS.device_map


def extract(spec, task, path, world=distributed.SINGLE, device=None):
    return extract_to_cache(spec, task, path, FLAGS.batch_size, device or resolve_device(FLAGS.device),
                            FLAGS.precision, FLAGS.image_size or None, FLAGS.chunk_rows, world, device_map())


def debug(spec, task):
    """The paper's --debug: the first batch of each split through the model, nothing kept."""
    first = {split: getattr(task, split).subset(torch.arange(min(FLAGS.batch_size, len(getattr(task, split)))))
             for split in ("train", "test")}
    with tempfile.TemporaryDirectory() as tmp:
        cache = extract(spec, dataclasses.replace(task, val=None, **first), os.path.join(tmp, "debug.pt"))
    meta = cache["meta"]
    finite = all(bool(torch.isfinite(cache[split]).all()) for split in first)
    print(f"debug: {FLAGS.model_class} on {meta['n_train']} train and {meta['n_test']} test rows of "
          f"{task.name}: {meta['dim']} features per row, {'all finite' if finite else 'some NaN or inf'}; "
          f"nothing saved")


def save():
    check_bounds(FLAGS, BOUNDS)
    world = distributed.from_environment()
    if FLAGS.debug and world.size > 1:
        raise UserError("--debug is a one-process try; run it with python, not torchrun")
    entry = dataset_entry(FLAGS.dataset, cli.data_options())
    spec = resolve_model(FLAGS.model_class)
    check_device_map(spec, device_map(), world)
    device = world.device(resolve_device(FLAGS.device))
    use_cores(FLAGS.num_workers)
    canonical = feature_path(FLAGS.features_dir, FLAGS.model_class, entry.name)
    path = FLAGS.save_path or canonical
    if FLAGS.keep_existing and complete_cache(path, entry):
        print(f"exists: {path}")
        return
    distributed.start(world, device)
    try:
        with world.main_first():  # rank 0 decodes the pictures once; the others read its decoded file
            task = load_entry(entry, FLAGS.data_dir or None, decoding_for(spec, FLAGS.image_size, FLAGS.paper_exact))
        if FLAGS.debug:
            return debug(spec, task)
        cache = extract(spec, task, path, world, device)
    finally:
        distributed.stop(world)
    if not world.is_main:
        return
    meta = cache["meta"]
    print(f"saved {path}: train {meta['n_train']} x {meta['dim']}, test {meta['n_test']} x {meta['dim']} "
          f"({meta['seconds']:.0f}s)")
    if os.path.abspath(path) != os.path.abspath(canonical):
        # run.py looks only at the canonical name; the file's meta names its model, so a misnamed
        # file is refused there rather than read as another model's features.
        print(f"note: run.py reads {canonical}; this file was saved under another name")


def complete_cache(path, entry):
    """Whether the cache at `path` holds every row of model --model_class on `entry`'s data, at
    --image_size (a cache of other settings is made again)."""
    if not os.path.exists(path):
        return False
    try:
        cache = read_features(path, FLAGS.model_class, entry.name, features_dir=FLAGS.features_dir,
                              image_size=FLAGS.image_size, need={})
    except UserError:
        return False
    meta = cache["meta"]
    return not cache.get("present") and meta.get("data_fingerprint", "") == entry.fingerprint


def main(argv):
    del argv
    main_guard(save)


if __name__ == "__main__":
    cli.run(main)
