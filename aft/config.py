"""A run's configuration: its values and defaults, the checks made before any work, its name.

The flags keep the names and meanings of the paper's run.py; run.py turns every field here into a
flag of the same name.
"""
import hashlib
import json
from dataclasses import dataclass, fields

from aft.errors import UserError, check_bounds
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

    @property
    def teacher_names(self):
        return model_names(self.pretrained_models)


# Flags that say where files go, how the run is logged, how fast it runs and whether it runs at all,
# not what it computes: they may change when a killed run is resumed, they are not part of a run's
# identity (its name's hash), and the results table does not tell runs apart by them.
BOOKKEEPING = frozenset({"resume", "skip_done", "ckpt_dir", "run_name", "use_wandb", "wandb_project", "wandb_group",
                         "features_dir", "data_dir", "out_dir", "device", "compile", "eval_steps",
                         "eval_batch_size", "extract_batch_size"})


def model_names(text):
    """The models of a comma-separated --pretrained_models value, in order."""
    return [m for m in text.split(",") if m]


def result_identity(cfg):
    """Every setting that changes what a run computes: all of Config but BOOKKEEPING. Float flags
    are kept as floats, so `Config(prec=10)` and `--prec=10` (10.0) are the same run."""
    identity = {}
    for f in fields(cfg):
        if f.name not in BOOKKEEPING:
            value = getattr(cfg, f.name)
            identity[f.name] = float(value) if isinstance(f.default, float) else value
    return identity


def default_run_name(cfg):
    """The readable settings, then 8 hex digits of the sha256 of the whole identity: runs that
    differ in any setting (steps, batch size, teachers, ...) never share a results file."""
    parts = [cfg.dataset, cfg.model_class, cfg.method, f"prec{cfg.prec:g}", f"lr{cfg.lr:g}"]
    if cfg.train_frac != 1:
        parts.append(f"frac{cfg.train_frac:g}")
    parts.append(f"seed{cfg.seed}")
    if cfg.use_val:
        parts.append("val")
    digest = hashlib.sha256(json.dumps(result_identity(cfg), sort_keys=True).encode()).hexdigest()[:8]
    parts.append(digest)
    return "_".join(parts).replace("/", "-")


def check_same_run(path, saved, cfg, advice):
    """Refuse to overwrite or continue the run recorded in `path` (a results JSON or a checkpoint,
    whose config dict is `saved`) unless it is this configuration's. Each differing flag is named
    as `--flag=then (now value)`. A flag only one side has counts as differing: a file written by
    other code may not be the same run, and a file is never lost on a guess."""
    now = result_identity(cfg)
    then = {k: v for k, v in saved.items() if k not in BOOKKEEPING}
    changes = [f"--{k}={then[k]} (now {now[k]})" for k in now if k in then and then[k] != now[k]]
    changes += [f"--{k} unrecorded (now {now[k]})" for k in now if k not in then]
    changes += [f"--{k}={then[k]} (no such flag now)" for k in then if k not in now]
    if changes:
        raise UserError(f"{path} was written with {', '.join(changes)}; {advice}")


# Every numeric flag's bound (aft.errors.BOUND_TESTS), checked before anything loads; a numeric
# field without one fails tests/test_flags.py.
BOUNDS = {"seed": ">= 0", "train_frac": "(0, 1]", "prec": ">= 0", "prior_lr": "> 0", "steps": "> 0",
          "eval_steps": "> 0", "batch_size": "> 0", "lr": "> 0", "wd": ">= 0", "image_size": ">= 0",
          "teacher_image_size": ">= 0", "eval_batch_size": "> 0", "extract_batch_size": "> 0"}


def check_config(cfg):
    """Every check that needs no data or model: a bad value fails here, before anything loads."""
    from aft.methods import get_method
    method = get_method(cfg.method)
    check_bounds(cfg, BOUNDS, notes={"prec": "it is beta, the regularisation strength"})
    if cfg.optimizer not in ("adam", "sgd"):
        raise UserError(f"--optimizer={cfg.optimizer}; valid: adam, sgd")
    if not cfg.no_augment and not method.augments:
        raise UserError("--no_augment=False: augmentation is only for --method=init (the paper's code asserts it); "
                        "drop --no_augment or use --method=init")
    if cfg.init_model and cfg.init_model != cfg.model_class:
        raise UserError(f"--init_model={cfg.init_model} must be empty (random init) or equal to "
                        f"--model_class={cfg.model_class} (start from its pre-trained weights)")
    if cfg.resume and not cfg.ckpt_dir:
        raise UserError("--resume needs --ckpt_dir (where the run's checkpoint is)")
    if method.uses_teacher and not cfg.teacher_names:
        raise UserError(f"--method={cfg.method} needs --pretrained_models (comma-separated model names)")
    # The downstream model (a linear probe has none) and every teacher whose features will be
    # computed must read the dataset's inputs: said now, not after a long load or extraction. An
    # unknown name fails here too. A cached teacher's modality was checked when its cache was made.
    from aft.datasets import dataset_entry, tensor_product
    from aft.features import cached_modality, feature_path
    from aft.models import check_modality, resolve_model
    from aft.teachers import uncached_teachers
    dataset = dataset_entry(cfg.dataset)
    if method.trains_student:
        check_modality(resolve_model(cfg.model_class), dataset)
    for name in uncached_teachers(cfg) if method.uses_teacher else []:
        spec = resolve_model(name)
        check_modality(spec, dataset)
        if spec.downstream_only:
            raise UserError(spec.downstream_only)
    if tensor_product(dataset.modality):
        student = resolve_model(cfg.model_class) if method.trains_student else None
        teachers = [cached_modality(feature_path(cfg.features_dir, name, cfg.dataset)) or resolve_model(name).modality
                    for name in cfg.teacher_names] if method.uses_teacher else []
        method.check_tensor_product(cfg.dataset, teachers, student.product_factors if student else None)
