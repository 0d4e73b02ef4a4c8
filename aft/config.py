"""A run's configuration: plain values with their defaults, and the bounds of the numeric ones.

The flags keep the names and meanings of the paper's run.py; run.py turns every field here into a
flag of the same name, and every method's own hyperparameters (declared beside its maths,
aft.methods) into flags too, whose values a Config carries in `method_args`. Everything that needs
more than these values (names resolved, caches looked for, checks) is aft.plan's.
"""
from dataclasses import dataclass, field

from aft.datasets.base import DataOptions
from aft.features import DEFAULT_FEATURES_DIR


@dataclass
class Config:
    seed: int = 0
    model_class: str = "tiny_bert"
    init_model: str = ""
    dataset: str = "tweets"
    pretrained_models: str = "all-MiniLM-L6-v2"
    train_frac: float = 1.0
    use_val: bool = False
    method: str = "aft"
    prec: float = 3.0  # the demo's beta, chosen on its validation split (README)
    steps: int = 1500
    eval_steps: int = 500
    optimizer: str = "adam"
    batch_size: int = 64
    lr: float = 1e-3
    wd: float = 0.0
    use_wandb: bool = False
    wandb_project: str = "aft"
    wandb_group: str = ""
    ckpt_dir: str = ""
    resume: bool = False
    skip_done: bool = False
    run_name: str = ""
    features_dir: str = DEFAULT_FEATURES_DIR
    data_dir: str = ""
    out_dir: str = "./results"
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    image_size: int = 0
    teacher_image_size: int = 0  # 0: each teacher's own input size (never the student's --image_size)
    eval_batch_size: int = 512
    extract_batch_size: int = 256
    paper_exact: bool = False  # the paper's code's arithmetic where this tool's defaults differ (README)
    # How your own data is read (--text_columns, --label_column, --prompt, ...); the defaults for the
    # registered datasets.
    data: DataOptions = field(default_factory=DataOptions)
    # The methods' own hyperparameters by flag name (--learn_scales, --prior_lr, --no_augment, ...);
    # one not given takes the default its method declares.
    method_args: dict = field(default_factory=dict)

    @property
    def teacher_names(self):
        return model_names(self.pretrained_models)


# Flags that say where files go, how the run is logged, how fast it runs and whether it runs at all,
# not what it computes: they may change when a killed run is resumed, they are not part of a run's
# identity (its name's hash), and the results table does not tell runs apart by them.
BOOKKEEPING = frozenset({"resume", "skip_done", "ckpt_dir", "run_name", "use_wandb", "wandb_project", "wandb_group",
                         "features_dir", "data_dir", "out_dir", "device", "compile", "eval_steps",
                         "eval_batch_size", "extract_batch_size"})

# Flags added after runs were named by their identity: part of it only when set, so that no earlier
# run's name changed.
ADDED_FLAGS = frozenset({"paper_exact"})

# Every numeric flag's bound (aft.errors.BOUND_TESTS), checked before anything loads; a numeric
# field without one fails tests/test_flags.py. The methods' hyperparameters carry their own.
BOUNDS = {"seed": ">= 0", "train_frac": "(0, 1]", "prec": ">= 0", "steps": "> 0", "eval_steps": "> 0",
          "batch_size": "> 0", "lr": "> 0", "wd": ">= 0", "image_size": ">= 0", "teacher_image_size": ">= 0",
          "eval_batch_size": "> 0", "extract_batch_size": "> 0"}
OPTIMIZERS = ("adam", "sgd")
PRECISIONS = ("auto", "bf16", "fp32")


def model_names(text):
    """The models of a comma-separated --pretrained_models value, in order."""
    return [m for m in text.split(",") if m]
