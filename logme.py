"""Score a cached feature file with LogME and store the score and weights in it (B-Tuning).

    python logme.py --model_class=vit_small_patch16_224.augreg_in1k --dataset=cifar10
    python logme.py --model_class=efficientnet_lite2 --dataset=digits --train_frac=0.1

Reads {features_dir}/{model_class}_{dataset}.pt, fits LogME of its train features against the
dataset's train labels and writes logme_score and logme_weights (C x D) into the same file,
atomically. run.py --method=btune reads them. It scores the rows run.py trains on: with
--train_frac < 1 its fixed subsample (keys suffixed _train_frac={f}), with --use_val=True all but
the held-out validation rows, so tuning on them never sees their labels (keys suffixed _val).
"""
from absl import flags

from aft import cli
from aft.datasets import dataset_entry, load_entry, train_eval_indices
from aft.errors import check_bounds, main_guard
from aft.features import DEFAULT_FEATURES_DIR, feature_path, read_features
from aft.files import atomic_save, exclusive
from aft.logme import logme
from aft.prepare import logme_keys
from aft.runtime import resolve_device

# The paper's code has no LogME script: every flag is this tool's own.
BOUNDS = {"train_frac": "(0, 1]"}
cli.define(cli.TOOL, "model_class", "all-MiniLM-L6-v2", "the model whose cached features are scored")
cli.define(cli.TOOL, "dataset", "tweets", cli.DATASET_HELP)
cli.define(cli.TOOL, "train_frac", 1.0, "score the fixed subsample of the train split that run.py --train_frac uses",
           bound=BOUNDS["train_frac"])
cli.define(cli.TOOL, "use_val", False, "leave out the validation rows run.py --use_val=True holds out")
cli.define(cli.TOOL, "features_dir", DEFAULT_FEATURES_DIR, "folder of the feature cache")
cli.define(cli.TOOL, "data_dir", "", "folder of datasets on disk")
cli.define(cli.TOOL, "device", "auto", "auto, cpu, cuda, cuda:N")
cli.define_data_flags()
FLAGS = flags.FLAGS


def score():
    check_bounds(FLAGS, BOUNDS)
    entry = dataset_entry(FLAGS.dataset, cli.data_options())
    task = load_entry(entry, FLAGS.data_dir or None, pictures=False)  # the labels are what LogME reads
    path = feature_path(FLAGS.features_dir, FLAGS.model_class, entry.name)
    holds_out = FLAGS.use_val and not entry.has_val  # the rows run.py --use_val=True evaluates on
    rows, _ = train_eval_indices(len(task.train), FLAGS.train_frac, holds_out)
    with exclusive(path):  # read, score and write back with no other writer in between
        cache = read_features(path, FLAGS.model_class, features_dir=FLAGS.features_dir, task=task,
                              need={"train": rows})
        features, labels = cache["train"][rows], task.train.labels[rows]
        device = resolve_device(FLAGS.device)
        value, weights = logme(features.to(device), labels.to(device), num_classes=task.num_classes)
        score_key, weights_key = logme_keys(FLAGS.train_frac, holds_out)
        cache[score_key], cache[weights_key] = float(value), weights.float().cpu().contiguous()
        atomic_save(cache, path)
    print(f"LogME of {FLAGS.model_class} on {task.name} ({len(labels)} train rows): {value:.4f}; "
          f"saved {score_key}, {weights_key} {tuple(weights.shape)} in {path}")


def main(argv):
    del argv
    main_guard(score)


if __name__ == "__main__":
    cli.run(main)
