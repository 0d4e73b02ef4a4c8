"""One run's plan, made once from its configuration before any work: the method and its settings,
the resolved downstream and pre-trained models, which caches are missing, the side pictures are
decoded at, the device, the precision, the run's name and files. Every check that needs no data is
made here, so a bad value fails before anything loads; what runs after (aft.experiment, the
trainers, the loop) reads the plan and resolves no name again."""
import dataclasses
import os
import tempfile
from dataclasses import dataclass
from types import SimpleNamespace

from aft.config import BOUNDS, OPTIMIZERS, Config
from aft.datasets import dataset_entry, tensor_product, train_eval_indices
from aft.datasets.decode import decode_size, decoding_for
from aft.distributed import SINGLE
from aft.errors import UserError, check_bounds, first_line
from aft.features import cached_modality, feature_path
from aft.identity import compose_run_name, flat_config, ignored_flags, legacy_run_name, result_identity
from aft.methods import default_of, get_method, hyperparameters
from aft.models import check_modality, resolve_model
from aft.runtime import resolve_device, resolve_precision


@dataclass(frozen=True)
class TeacherPlan:
    """A pre-trained model of the run."""
    name: str
    cache: str  # its feature cache
    cached: bool  # whether the cache exists (else it is computed before training)
    spec: object = None  # its aft.models ModelSpec; None when cached (checked when the cache was made)

    @property
    def modality(self):
        return self.spec.modality if self.spec is not None else (cached_modality(self.cache) or
                                                                 resolve_model(self.name).modality)


@dataclass(frozen=True)
class RunPlan:
    cfg: Config  # the plain values (lr, steps, ...)
    method: type  # the method's class (aft.methods)
    settings: object  # the method's hyperparameters: an instance of method.Settings
    dataset: object  # the dataset's registry entry (aft.datasets.DatasetEntry)
    student: object  # the downstream model's ModelSpec; None for a method without one (linear_probe)
    teachers: tuple  # TeacherPlan of each pre-trained model, in order (none for a method without)
    decode_size: object  # how pictures of varying size are decoded for the run: a side, or a Decoding
    device: object  # torch.device of this process
    precision: str  # "bf16" or "fp32"
    run_name: str
    identity: dict  # every setting that changes what the run computes (aft.identity)
    world: object = SINGLE  # this process among those torchrun started (aft.distributed)
    legacy_name: str = None  # the run's name under earlier versions of this tool, where it differs

    @property
    def results_path(self):
        return os.path.join(self.cfg.out_dir, f"{self.run_name}.json")

    @property
    def ckpt_path(self):
        return os.path.join(self.cfg.ckpt_dir, f"{self.run_name}.pt") if self.cfg.ckpt_dir else None

    @property
    def per_model_pictures(self):
        """Whether each model reads the pictures decoded for it (pictures of varying size; all pictures
        under --paper_exact, those of the paper's datasets, as its code applies each model's transform)."""
        return self.dataset.decodes or (self.cfg.paper_exact and self.dataset.paper_decodes)

    @property
    def holds_out(self):
        """Whether --use_val evaluates on a share held out of the train split (the dataset has no
        validation split of its own)."""
        return self.cfg.use_val and not self.dataset.has_val

    @property
    def missing(self):
        """The pre-trained models whose cache is computed before training."""
        return [t.name for t in self.teachers if not t.cached]

    def rows(self, n_train):
        """(rows trained on, held-out rows evaluated on or None) of a train split of n_train rows."""
        return train_eval_indices(n_train, self.cfg.train_frac, self.holds_out)


def method_settings(cfg, method):
    """The method's Settings from the run's method_args, after every hyperparameter's bound; a value
    that only another method reads is refused where that method says so."""
    values = {f.name: cfg.method_args.get(f.name, default_of(f, cfg.paper_exact)) for f in hyperparameters()}
    check_bounds(SimpleNamespace(**values), {f.name: f.metadata["bound"] for f in hyperparameters() if f.metadata["bound"]})
    own = {f.name for f in dataclasses.fields(method.Settings)}
    for f in hyperparameters():
        refused = f.metadata.get("refused_elsewhere")
        if f.name not in own and refused and values[f.name] != default_of(f, cfg.paper_exact):
            raise UserError(f"--{f.name}={values[f.name]}: {refused}")
    return method.Settings(**{name: values[name] for name in own})


def make_plan(cfg, world=SINGLE):
    """The plan of the run `cfg` in this process of `world`; a UserError for anything wrong that can
    be seen without loading data or models. Which caches exist is rank 0's view, so that every
    process does the same."""
    method = get_method(cfg.method)
    check_bounds(cfg, BOUNDS, notes={"prec": "it is beta, the regularisation strength"})
    settings = method_settings(cfg, method)
    if cfg.optimizer not in OPTIMIZERS:
        raise UserError(f"--optimizer={cfg.optimizer}; valid: {', '.join(OPTIMIZERS)}")
    if cfg.init_model and cfg.init_model != cfg.model_class:
        raise UserError(f"--init_model={cfg.init_model} must be empty (random init) or equal to "
                        f"--model_class={cfg.model_class} (start from its pre-trained weights)")
    if cfg.resume and not cfg.ckpt_dir:
        raise UserError("--resume needs --ckpt_dir (where the run's checkpoint is)")
    if method.uses_teacher and not cfg.teacher_names:
        raise UserError(f"--method={cfg.method} needs --pretrained_models (comma-separated model names)")
    if cfg.paper_exact and cfg.precision == "bf16":
        raise UserError("--paper_exact computes as the paper's code does, in fp32 without TF32: drop --precision=bf16")
    if cfg.paper_exact and world.size > 1:
        raise UserError("--paper_exact trains as the paper's code does, in one process (its last batch of an epoch is "
                        "short): run it with python, not torchrun")
    if cfg.batch_size % world.size:
        raise UserError(f"--batch_size={cfg.batch_size} is the batch of all {world.size} processes together and "
                        f"must divide evenly among them; use a multiple of {world.size}")
    dataset = dataset_entry(cfg.dataset, cfg.data.check())
    # The downstream model (a linear probe has none) and every teacher whose features will be
    # computed must read the dataset's inputs: said now, not after a long load or extraction. An
    # unknown name fails here too. A cached teacher's modality was checked when its cache was made.
    student = resolve_model(cfg.model_class) if method.trains_student else None
    if student is not None:
        check_modality(student, dataset)
    names = cfg.teacher_names if method.uses_teacher else []
    paths = [feature_path(cfg.features_dir, name, dataset.name) for name in names]
    cached = world.gather_objects([os.path.exists(p) for p in paths])[0]
    teachers = tuple(TeacherPlan(name, path, there, None if there else resolve_model(name))
                     for name, path, there in zip(names, paths, cached))
    for t in teachers:
        if t.spec is not None:
            check_modality(t.spec, dataset)
            if t.spec.downstream_only:
                raise UserError(t.spec.downstream_only)
    if tensor_product(dataset.modality):
        method.check_tensor_product(dataset.name, [t.modality for t in teachers],
                                    student.product_factors if student else None)
    if student is not None:
        check_image_size(student, cfg.image_size, "image_size")
    for t in teachers:
        if t.spec is not None:
            check_image_size(t.spec, cfg.teacher_image_size, "teacher_image_size")
    device = world.device(resolve_device(cfg.device))
    if cfg.use_wandb:
        check_wandb()
    if world.is_main:  # the folders this run will write, before any work
        check_writable(cfg.out_dir, "out_dir")
        if cfg.ckpt_dir:
            check_writable(cfg.ckpt_dir, "ckpt_dir")
        if any(not t.cached for t in teachers) or method.preparation:
            check_writable(cfg.features_dir, "features_dir")
    note_ignored(cfg, dataset)
    identity = result_identity(cfg, dataset)
    name = cfg.run_name or compose_run_name(cfg, identity, dataset)
    legacy = legacy_run_name(cfg, dataset) if not cfg.run_name else name
    return RunPlan(cfg, method, settings, dataset, student, teachers, pictures_side(cfg, student, teachers), device,
                   resolve_precision("fp32" if cfg.paper_exact else cfg.precision, device), name, identity, world,
                   legacy_name=legacy if legacy != name else None)


def note_ignored(cfg, dataset=None):
    """One line for each flag given a value that the run's method ignores: it changes nothing. (An
    empty value or 0, as `--pretrained_models= --prec=0` for init, says that already.)"""
    defaults = {**{f.name: f.default for f in dataclasses.fields(Config)},
                **{f.name: default_of(f, cfg.paper_exact) for f in hyperparameters()}}  # as flat_config's
    flat = flat_config(cfg)
    for flag in sorted(ignored_flags(cfg, dataset)):
        if flat[flag] != defaults[flag] and flat[flag]:
            print(f"note: --{flag}={flat[flag]} changes nothing for --method={cfg.method}, so it is no part of the "
                  f"run's identity", flush=True)


def check_image_size(spec, size, flag):
    """An input size below what the model can read (the side of its first layer's patches or strides) is
    refused: every picture would shrink to less than one of its cells."""
    least = spec.least_pixels() if size and spec.least_pixels else 0
    if size and size < least:
        raise UserError(f"--{flag}={size} is smaller than {spec.name} can read: its first layer takes {least} x "
                        f"{least} pixels at a time; use --{flag}={least} or more (0: its own size)")


def check_wandb():
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise UserError("--use_wandb=True needs the package wandb (0.19.10 or newer): pip install wandb, or drop "
                        "--use_wandb") from None


def check_writable(folder, flag):
    """A folder the run will write must take a new file (or, not there yet, its nearest existing folder
    must): refused before any work otherwise, naming the flag, rather than after hours of training.
    Nothing is left behind: a probe file is made and removed, no folder is made."""
    there = os.path.abspath(folder)
    while not os.path.exists(there):
        there = os.path.dirname(there)
    try:
        if not os.path.isdir(there):
            raise NotADirectoryError(f"{there} is a file, not a folder")
        fd, probe = tempfile.mkstemp(dir=there, prefix=".aft-write-check-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UserError(f"--{flag}={folder} cannot be written ({first_line(e)}); give --{flag} a folder you can "
                        f"write") from None


def pictures_side(cfg, student, teachers):
    """How the run's pictures of varying size are decoded: for the downstream model (at its input size
    over its crop fraction), whatever is cached, so the same flags always give it the same pixels;
    without one (a linear probe), for the first pre-trained model whose features are computed. A
    pre-trained model whose features are computed gets the pictures decoded for it (aft.teachers), as
    save_features.py does."""
    if student is not None:
        return decoding_for(student, cfg.image_size, cfg.paper_exact)
    missing = [t.spec for t in teachers if not t.cached]
    return decoding_for(missing[0], cfg.teacher_image_size, cfg.paper_exact) if missing else decode_size()
