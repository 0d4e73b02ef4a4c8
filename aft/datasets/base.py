"""The dataset registry and the types every loader returns, with the split helpers that depend only
on a split's size.

A loader returns raw inputs (a list of strings, a uint8 image tensor N x C x H x W with square
images, or an aft.inputs.ImageText of pictures + texts) and int64 labels, row i being example i of
the canonical split order: the feature cache relies on that order. Tokenising and resizing to a
model's size belong to the model (aft.inputs), not to the dataset.
"""
import math
from dataclasses import dataclass, field, fields

import torch

from aft.errors import UserError, check_bounds
from aft.registry import Registry

VAL_SPLIT_SEED = 42  # the paper's fixed seed for the 10% validation hold-out
VAL_FRAC = 0.1


@dataclass
class Split:
    inputs: object  # list[str] for text, uint8 tensor (N, C, H, W) for images
    labels: torch.Tensor
    # originals(i) -> row i's picture as it is on disk (a PIL image), for augmenting it as the paper's code
    # does (--paper_exact); None where a loader keeps none
    originals: object = None

    def __len__(self):
        return len(self.labels)

    def subset(self, idx):
        listed = isinstance(self.inputs, list)
        rows = idx.tolist() if listed or self.originals is not None else None
        inputs = [self.inputs[i] for i in rows] if listed else self.inputs[idx]
        originals = None if self.originals is None else (lambda i, get=self.originals: get(rows[i]))
        return Split(inputs, self.labels[idx], originals)


@dataclass
class Task:
    name: str
    modality: str  # "text", "image", or "image_text" (snli-ve: a picture and a hypothesis)
    num_classes: int
    train: Split
    test: Split
    truncation_side: str = "right"  # which end of a too-long text the tokenizer cuts (the paper code's, per set)
    step_multiplier: int = 1  # the paper runs 4x the steps on mnli, qqp, qnli
    class_names: list = field(default_factory=list)
    decoded_size: int = 0  # side of the squares pictures of varying size were decoded to; 0: kept as they are
    val: Split = None  # the dataset's own validation split, where it has one (--use_val evaluates on it)
    skipped: int = 0  # bad rows left out (--skip_bad_rows)
    fingerprint: str = ""  # your own data's files as they are (the DatasetEntry's)
    model_ready: bool = False  # its pictures were decoded to exactly one model's input (--paper_exact)
    flags: str = ""  # how the dataset is given on the command line (the DatasetEntry's)


def option(default, help, choices=None, bound=None):
    return field(default=default, metadata=dict(help=help, choices=choices, bound=bound))


@dataclass(frozen=True)
class DataOptions:
    """How to read the researcher's own data (an image folder, a text table, a Hugging Face dataset):
    flags of every script, at their defaults for the registered datasets."""
    text_columns: str = option("", "your own text data: the comma-separated columns holding the text (default: the "
                                   "fields of --prompt, else a column named text or sentence)")
    label_column: str = option("label", "your own data: the column holding the label (strings or integers)")
    prompt: str = option("", "your own text data: the template each row's text is written into, "
                             "'Question: {question} Answer: ' style (default: the text columns, one per line)")
    image_column: str = option("", "a Hugging Face dataset: the column holding pictures (default: image, when there "
                                   "is one)")
    truncation_side: str = option("right", "your own text data: which end of a too-long text the tokenizer cuts",
                                  choices=["left", "right"])
    train_split: str = option("train", "your own data: the split (sub-folder, file or Hugging Face split) trained on")
    test_split: str = option("test", "your own data: the split evaluated on")
    val_split: str = option("", "your own data: the split --use_val evaluates on (default: val or validation, when "
                                "there is one; else 10% of the train split is held out)")
    test_frac: float = option(0.2, "your own data without a test split: the fraction of its rows held out as test",
                              bound="(0, 1)")
    split_seed: int = option(0, "your own data without a test split: the seed of the test rows drawn", bound=">= 0")
    skip_bad_rows: bool = option(False, "your own data: leave out unreadable pictures, empty texts and rows without a "
                                        "label (counted in the feature cache and the results) instead of stopping")

    def check(self):
        """Each option within its bound and choices, before any work; returns self."""
        check_bounds(self, {f.name: f.metadata["bound"] for f in fields(self) if f.metadata["bound"]})
        for f in fields(self):
            if f.metadata["choices"] and getattr(self, f.name) not in f.metadata["choices"]:
                raise UserError(f"--{f.name}={getattr(self, f.name)}; valid: {', '.join(f.metadata['choices'])}")
        return self

    def changed(self):
        """{flag: value} of the options not at their defaults."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


@dataclass(frozen=True)
class DatasetEntry:
    """What the registry knows of a dataset without loading it: enough for the checks made before any
    work (aft.models.check_modality reads only the name and the modality, of a Task or of this)."""
    name: str  # the dataset's name in file names and results: a registered name, or your data's (aft.datasets.own)
    modality: str  # that of the Task `load` returns
    load: object  # load(data_dir, decoding) -> Task; decoding: how pictures of varying size become squares (Decoding)
    has_val: bool = False  # the dataset has a validation split of its own (--use_val evaluates on it)
    decodes: bool = False  # its pictures are of varying size and decoded for each model at its side (aft.plan)
    paper_decodes: bool = False  # under --paper_exact its pictures go through each model's own timm transform
    fingerprint: str = ""  # your own data's files as they are (names, sizes, times): a cache of other files is stale
    given: str = ""  # your own data: its --dataset and own-data flags as given, for the commands an error prints

    @property
    def flags(self):
        """The dataset on a command line: --dataset=NAME, or your own data's flags as given."""
        return self.given or f"--dataset={self.name}"

    def resolve(self, name, options):
        """The registered dataset itself: the own-data options do not apply to it."""
        if options.changed():
            flag = next(iter(options.changed()))
            raise UserError(f"--{flag} is for your own data (a folder, a table file or a Hugging Face dataset); "
                            f"{self.name} is read as the paper's code reads it: drop --{flag}")
        return self


DATASETS = Registry("dataset")  # name -> DatasetEntry, or (aft.datasets.own) a kind of data by the form of its name


def tensor_product(modality):
    """Whether the pre-trained models' features of a dataset of this modality combine as a tensor
    product rather than side by side: on image + text pairs (SNLI-VE) an image model's features of
    the picture (x) a text model's of the hypothesis, as the paper's code combines them."""
    return modality == "image_text"


def register_dataset(name, modality, decodes=False, paper_decodes=None):
    """Register the loader `fn(data_dir, decoding) -> Task` of a dataset; `paper_decodes` (default:
    `decodes`): whether --paper_exact decodes its pictures per model as the paper's code does."""
    def wrap(fn):
        DATASETS.register(name, DatasetEntry(name, modality, fn, decodes=decodes,
                                             paper_decodes=decodes if paper_decodes is None else paper_decodes))
        return fn
    return wrap


def train_eval_indices(n_train, train_frac, use_val):
    """Rows of the canonical train split to train on, and the held-out rows to evaluate on (or None),
    as the paper's code picks them: one permutation (seed 42) cut into a train_frac share, a 10%
    validation share with use_val, and the rest unused, so --train_frac=0.5 --use_val=True trains on
    half the set. Sizes follow torch's random_split: each share floored, the rows left over handed
    out one each from the first share on. The rows are returned in dataset order."""
    if not 0 < train_frac <= 1:
        raise UserError(f"--train_frac={train_frac} must be in (0, 1]")
    val_frac = VAL_FRAC if use_val else 0.0
    fracs = [min(train_frac, 1 - val_frac), val_frac]
    fracs.append(1 - sum(fracs))
    sizes = [math.floor(n_train * f) for f in fracs]
    for i in range(n_train - sum(sizes)):
        sizes[i % len(sizes)] += 1
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    train, val = perm[:sizes[0]], perm[sizes[0]:sizes[0] + sizes[1]]
    return train.sort().values, (val.sort().values if use_val else None)


def subset_suffix(train_frac, use_val):
    """The suffix of the files and keys computed from the rows train_eval_indices picks, so results
    from different training rows never overwrite or stand in for one another."""
    return ("" if train_frac == 1 else f"_train_frac={train_frac}") + ("_val" if use_val else "")


MIN_TRAIN_ROWS = 2  # one row teaches nothing, and a batch of one breaks BatchNorm in training
# The --train_frac values an error may suggest: two significant digits, ascending, up to 1.
SUGGESTED_FRACS = [float(f"{m}e{e}") for e in range(-10, 0) for m in range(10, 100)] + [1.0]


def check_train_rows(dataset, n_train, n_rows, train_frac, use_val, num_classes=2):
    """One line when the `n_rows` rows train_eval_indices(n_train, train_frac, use_val) picked are too
    few to train on (fewer than two, or than the `num_classes` classes of the train split), naming the
    smallest --train_frac (to two significant digits) that gives enough."""
    least = max(MIN_TRAIN_ROWS, num_classes)
    if n_rows >= least:
        return
    why = f"one per class of its {num_classes}" if num_classes > MIN_TRAIN_ROWS else "a batch of one breaks BatchNorm"

    def enough(frac):
        return len(train_eval_indices(n_train, frac, use_val)[0]) >= least

    if not enough(1.0):
        held_out = " after the validation hold-out (--use_val)" if use_val else ""
        raise UserError(f"dataset {dataset} has too few training rows{held_out} to train on: at least "
                        f"{least} are needed ({why})")
    low, high = -1, len(SUGGESTED_FRACS) - 1  # SUGGESTED_FRACS[high] gives enough; [low] does not (-1: none)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(SUGGESTED_FRACS[mid]) else (mid, high)
    raise UserError(f"--train_frac={train_frac} leaves {n_rows} training row{'' if n_rows == 1 else 's'} of "
                    f"dataset {dataset}; at least {least} are needed ({why}): use --train_frac="
                    f"{SUGGESTED_FRACS[high]:g} or more")
