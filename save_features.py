"""Cache a pre-trained model's features of a dataset's train and test splits.

    python save_features.py --model_class=all-MiniLM-L6-v2 --dataset=tweets
    python save_features.py --model_class=vit_giant_patch14_dinov2.lvd142m --dataset=cifar10 \
        --save_path=./features/vit_giant_patch14_dinov2.lvd142m_cifar10.pt

The file is written atomically; run.py finds it at {features_dir}/{model_class}_{dataset}.pt.
"""
import os

from absl import app, flags

from aft.datasets import load_task
from aft.errors import UserError, main_guard
from aft.extract import extract_to_cache
from aft.features import DEFAULT_FEATURES_DIR, feature_path
from aft.runtime import resolve_device

flags.DEFINE_string("model_class", "all-MiniLM-L6-v2", "pre-trained model (timm name, Hugging Face id or folder, embedded name)")
flags.DEFINE_string("dataset", "tweets", "dataset name")
flags.DEFINE_string("save_path", "", "output file (default {features_dir}/{model_class}_{dataset}.pt)")
flags.DEFINE_string("features_dir", DEFAULT_FEATURES_DIR, "folder of the feature cache")
flags.DEFINE_integer("batch_size", 256, "inference batch size")
flags.DEFINE_integer("num_workers", 0, "decoding processes for datasets read from image files (0: in this process)")
flags.DEFINE_string("data_dir", "", "folder of datasets on disk")
flags.DEFINE_string("device", "auto", "auto, cpu, cuda, cuda:N")
flags.DEFINE_string("precision", "auto", "auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32")
flags.DEFINE_integer("image_size", 0, "image input size (0: the model's own)")
FLAGS = flags.FLAGS


def save():
    if FLAGS.batch_size <= 0:
        raise UserError(f"--batch_size={FLAGS.batch_size} must be > 0")
    canonical = feature_path(FLAGS.features_dir, FLAGS.model_class, FLAGS.dataset)
    path = FLAGS.save_path or canonical
    task = load_task(FLAGS.dataset, FLAGS.data_dir or None)
    cache = extract_to_cache(FLAGS.model_class, task, path, FLAGS.batch_size, resolve_device(FLAGS.device),
                             FLAGS.precision, FLAGS.image_size or None)
    meta = cache["meta"]
    print(f"saved {path}: train {meta['n_train']} x {meta['dim']}, test {meta['n_test']} x {meta['dim']} "
          f"({meta['seconds']:.0f}s)")
    if os.path.abspath(path) != os.path.abspath(canonical):
        # run.py looks only at the canonical name; the file's meta names its model, so a misnamed
        # file is refused there rather than read as another model's features.
        print(f"note: run.py reads {canonical}; this file was saved under another name")


def main(argv):
    del argv
    main_guard(save)


if __name__ == "__main__":
    app.run(main)
