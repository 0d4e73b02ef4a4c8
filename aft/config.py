"""A run's configuration: its values and defaults, the checks made before any work, its name.

The flags keep the names and meanings of the paper's run.py; run.py turns every field here into a
flag of the same name.
"""
from dataclasses import dataclass

from aft.errors import UserError
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
    prec: float = 10.0  # the demo's beta, chosen on its validation split (README)
    learn_scales: bool = True
    prior_lr: float = 1e-2
    steps: int = 1500
    eval_steps: int = 500
    optimizer: str = "adam"
    batch_size: int = 64
    lr: float = 1e-3
    wd: float = 0.0
    no_augment: bool = True
    use_wandb: bool = False
    wandb_project: str = "aft"
    wandb_group: str = ""
    ckpt_dir: str = ""
    resume: bool = False
    run_name: str = ""
    features_dir: str = DEFAULT_FEATURES_DIR
    data_dir: str = ""
    out_dir: str = "./results"
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    image_size: int = 0
    eval_batch_size: int = 512
    extract_batch_size: int = 256

    @property
    def teacher_names(self):
        return model_names(self.pretrained_models)


# Flags that say where files go, how the run is logged and how fast it runs, not what it computes:
# they may change when a killed run is resumed, and the results table does not tell runs apart by them.
BOOKKEEPING = frozenset({"resume", "ckpt_dir", "run_name", "use_wandb", "wandb_project", "wandb_group",
                         "features_dir", "data_dir", "out_dir", "device", "compile", "eval_steps",
                         "eval_batch_size", "extract_batch_size"})


def model_names(text):
    """The models of a comma-separated --pretrained_models value, in order."""
    return [m for m in text.split(",") if m]


def default_run_name(cfg):
    parts = [cfg.dataset, cfg.model_class, cfg.method, f"prec{cfg.prec:g}", f"lr{cfg.lr:g}"]
    if cfg.train_frac != 1:
        parts.append(f"frac{cfg.train_frac:g}")
    parts.append(f"seed{cfg.seed}")
    if cfg.use_val:
        parts.append("val")
    return "_".join(parts).replace("/", "-")


def check_config(cfg):
    """Every check that needs no data or model: a bad value fails here, before anything loads."""
    from aft.methods import get_method
    method = get_method(cfg.method)
    if cfg.prec < 0:
        raise UserError(f"--prec={cfg.prec} must be >= 0 (it is beta, the regularisation strength)")
    if not 0 < cfg.train_frac <= 1:
        raise UserError(f"--train_frac={cfg.train_frac} must be in (0, 1]")
    for flag in ("steps", "batch_size", "eval_steps"):
        if getattr(cfg, flag) <= 0:
            raise UserError(f"--{flag}={getattr(cfg, flag)} must be > 0")
    if cfg.optimizer not in ("adam", "sgd"):
        raise UserError(f"--optimizer={cfg.optimizer}; valid: adam, sgd")
    if cfg.init_model and cfg.init_model != cfg.model_class:
        raise UserError(f"--init_model={cfg.init_model} must be empty (random init) or equal to "
                        f"--model_class={cfg.model_class} (start from its pre-trained weights)")
    if cfg.resume and not cfg.ckpt_dir:
        raise UserError("--resume needs --ckpt_dir (where the run's checkpoint is)")
    if method.uses_teacher and not cfg.teacher_names:
        raise UserError(f"--method={cfg.method} needs --pretrained_models (comma-separated model names)")
    if method.trains_student:  # a linear probe has no downstream model
        from aft.models import resolve_model
        resolve_model(cfg.model_class)  # an unknown name fails now, not after the dataset is loaded
