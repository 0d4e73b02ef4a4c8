"""Train a downstream model with a transfer method and a regularisation strength beta (--prec).

    python run.py                          # the offline demo: tweets, tiny BERT, MiniLM features, AFT
    python run.py --method=init            # standard transfer learning on the same task
    python run.py --help                   # the flags: the paper's, then this tool's own
    torchrun --nproc_per_node=4 run.py ... # data-parallel over 4 GPUs: the same run, --batch_size the global batch

Flags keep the names and meanings of the paper's code; the defaults live in aft.config.Config.
"""
import os
import sys
from dataclasses import fields

from absl import flags

from aft import cli, distributed
from aft.config import BOUNDS, OPTIMIZERS, PRECISIONS, Config
from aft.errors import check_bounds, main_guard
from aft.experiment import run
from aft.methods import METHODS, hyperparameters
from aft.runtime import resolve_device

HELP = {
    "seed": "random seed (model init, batch order, dropout)",
    "model_class": "downstream model: timm name, Hugging Face id or folder, or an embedded one (tiny_bert)",
    "init_model": "start from this model's pre-trained weights (= model_class); empty: random init",
    "dataset": cli.DATASET_HELP,
    "pretrained_models": "comma-separated pre-trained models whose cached features are concatenated",
    "train_frac": "fraction of the training set used (a fixed subset, the same for every seed)",
    "use_val": "hold out 10% of train (fixed split seed 42) and evaluate on it instead of test",
    "method": "init: standard transfer learning; aft: Adaptive Feature Transfer; the others: README's Methods",
    "prec": "beta, the regularisation strength",
    "steps": "training steps (x4 on mnli, qqp, qnli)",
    "eval_steps": "evaluate (and checkpoint) every this many steps",
    "optimizer": "adam, or sgd with momentum 0.9",
    "batch_size": "training batch size",
    "lr": "learning rate (cosine schedule over the run)",
    "wd": "weight decay",
    "use_wandb": "log to Weights & Biases (offline mode without WANDB_API_KEY)",
    "wandb_project": "wandb project",
    "wandb_group": "wandb group (default: dataset_model_method)",
    "ckpt_dir": "write a checkpoint here at every evaluation",
    "resume": "continue from the checkpoint in --ckpt_dir if there is one",
    "skip_done": "if the results JSON of this exact configuration exists, print its path and exit without training",
    "run_name": "name of the results file and checkpoint (default: dataset, model, method, prec, lr, seed, then 8 hex "
                "digits of a hash of every setting, so runs of other settings never share a file)",
    "features_dir": "folder of the feature cache {model}_{dataset}.pt",
    "data_dir": "folder of datasets on disk",
    "out_dir": "folder of the results JSON files",
    "device": "auto, cpu, cuda, cuda:N",
    "precision": "auto: bf16 on CUDA, fp32 on CPU",
    "compile": "torch.compile the model",
    "image_size": "image input size (0: the model's own)",
    "teacher_image_size": "image input size of the pre-trained models, when their features are computed and "
                          "checked against their cache (0: each model's own)",
    "eval_batch_size": "batch size of evaluation",
    "extract_batch_size": "batch size when a missing feature cache is computed on the fly",
    "paper_exact": "the paper's code's arithmetic where this tool's defaults differ: timm's transforms on each "
                   "picture, its epoch schedule and batches, its autoencoder for ft, RKD's teachers side by side, "
                   "learn_scales False unless given, Hugging Face students from pre-trained weights, fp32 "
                   "(README's Where the defaults differ)",
}
CHOICES = {"method": METHODS.names(), "optimizer": list(OPTIMIZERS), "precision": list(PRECISIONS)}

# The flags of the paper's run.py (its README's command and its main()'s other arguments), listed
# first by --help; the rest are this tool's own. The methods' hyperparameters say which they are.
PAPER_FLAGS = {"seed", "model_class", "init_model", "dataset", "pretrained_models", "train_frac", "use_val",
               "method", "prec", "steps", "eval_steps", "optimizer", "batch_size", "lr", "wd", "use_wandb",
               "ckpt_dir", "run_name"}

# The paper's run.py flags that change nothing here, accepted so that its command lines run:
# name -> (default, help, bound, the line printed when the flag is given).
PAPER_ONLY = {
    "cache": (False, "in the paper's code, hold the dataset in memory; always so here", None,
              "always so here: every dataset is held in memory (images decoded once, kept on disk) and the "
              "pre-trained models' features are read from their cache files"),
    "prior_freq": (1, "in the paper's code, update the downstream model at one step in every prior_freq and "
                      "AFT's scales at every step; not used here: both at every step", "> 0",
                   "not used: the downstream model and AFT's scales are updated together at every step "
                   "(the paper's default, --prior_freq=1)"),
    "prior_pretrain_steps": (0, "in the paper's code, steps of training the prior alone first (its training "
                                "loop ignores them); not used here", ">= 0",
                             "not used: AFT's scales are trained with the downstream model from the first step"),
}

GENERAL = [f for f in fields(Config) if f.name not in ("method_args", "data")]
for f in GENERAL:
    cli.define(cli.PAPER if f.name in PAPER_FLAGS else cli.TOOL, f.name, f.default, HELP[f.name],
               CHOICES.get(f.name), BOUNDS.get(f.name))
for f in hyperparameters():
    paper = f.metadata["paper_default"]
    cli.define(cli.PAPER if f.metadata["paper"] else cli.TOOL, f.name, f.default,
               f.metadata["help"] + (f" (under --paper_exact, {paper} unless given)" if paper is not None else ""),
               bound=f.metadata["bound"])
cli.define_data_flags()
for name, (default, text, bound, _) in PAPER_ONLY.items():
    cli.define(cli.PAPER, name, default, text, bound=bound)
FLAGS = flags.FLAGS


def config_from_flags():
    # A hyperparameter not given takes its method's default (the paper's code's under --paper_exact).
    return Config(**{f.name: getattr(FLAGS, f.name) for f in GENERAL}, data=cli.data_options(),
                  method_args={f.name: getattr(FLAGS, f.name) for f in hyperparameters() if FLAGS[f.name].present})


def start():
    """Check and note the paper-only flags, then run (under torchrun, in every process: rank 0 alone
    prints and writes files; errors still reach stderr from any)."""
    world = distributed.from_environment()
    if not world.is_main:
        sys.stdout = open(os.devnull, "w")
    check_bounds(FLAGS, {name: bound for name, (_, _, bound, _) in PAPER_ONLY.items() if bound})
    for name, (_, _, _, note) in PAPER_ONLY.items():
        if FLAGS[name].present:
            print(f"note: --{name}: {note}")
    cfg = config_from_flags()
    distributed.start(world, world.device(resolve_device(cfg.device)))
    try:
        return run(cfg, world)
    finally:
        distributed.stop(world)


def main(argv):
    del argv
    record = main_guard(start)
    print(f"final {record.eval_split} accuracy: {record.final_acc:.4f}  ({record.run_name}, {record.seconds:.0f}s)")


if __name__ == "__main__":
    cli.run(main)
