"""Train a downstream model with a transfer method and a regularisation strength beta (--prec).

    python run.py                          # the offline demo: tweets, tiny BERT, MiniLM features, AFT
    python run.py --method=init            # standard transfer learning on the same task
    python run.py --helpfull               # every flag

Flags keep the names and meanings of the paper's code; the defaults live in aft.config.Config.
"""
from dataclasses import fields

from absl import app, flags

from aft.config import Config
from aft.errors import main_guard
from aft.experiment import run

HELP = {
    "seed": "random seed (model init, batch order, dropout)",
    "model_class": "downstream model: timm name, Hugging Face id or folder, or an embedded one (tiny_bert)",
    "init_model": "start from this model's pre-trained weights (= model_class); empty: random init",
    "dataset": "dataset name (see aft/datasets/)",
    "pretrained_models": "comma-separated pre-trained models whose cached features are concatenated",
    "train_frac": "fraction of the training set used, in (0, 1]",
    "use_val": "hold out 10%% of train (fixed split seed 42) and evaluate on it instead of test",
    "method": "init (standard transfer learning), aft, kd, ...: see aft/methods",
    "prec": "beta, the regularisation strength (>= 0)",
    "learn_scales": "AFT learns its per-feature scales (False: fixed at 1/2)",
    "prior_lr": "learning rate of AFT's scales",
    "steps": "training steps (x4 on mnli, qqp, qnli)",
    "eval_steps": "evaluate (and checkpoint) every this many steps",
    "optimizer": "adam or sgd (momentum 0.9)",
    "batch_size": "training batch size",
    "lr": "learning rate (cosine schedule over the run)",
    "wd": "weight decay",
    "no_augment": "no data augmentation (augmentation is only ever used with method=init)",
    "use_wandb": "log to Weights & Biases (offline mode without WANDB_API_KEY)",
    "wandb_project": "wandb project",
    "wandb_group": "wandb group (default: dataset_model_method)",
    "ckpt_dir": "write a checkpoint here at every evaluation",
    "resume": "continue from the checkpoint in --ckpt_dir if there is one",
    "run_name": "name of the results file and checkpoint (default: from dataset, model, method, prec, lr, seed)",
    "features_dir": "folder of the feature cache {model}_{dataset}.pt",
    "data_dir": "folder of datasets on disk",
    "out_dir": "folder of the results JSON files",
    "device": "auto, cpu, cuda, cuda:N",
    "precision": "auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32",
    "compile": "torch.compile the model",
    "image_size": "image input size (0: the model's own)",
    "eval_batch_size": "batch size of evaluation",
    "extract_batch_size": "batch size when a missing feature cache is computed on the fly",
}

DEFINE = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}
for f in fields(Config):
    DEFINE[type(f.default)](f.name, f.default, HELP[f.name])
FLAGS = flags.FLAGS


def config_from_flags():
    return Config(**{f.name: getattr(FLAGS, f.name) for f in fields(Config)})


def main(argv):
    del argv
    results = main_guard(lambda: run(config_from_flags()))
    print(f"final {results['eval_split']} accuracy: {results['final_acc']:.4f}  "
          f"({results['run_name']}, {results['seconds']:.0f}s)")


if __name__ == "__main__":
    app.run(main)
