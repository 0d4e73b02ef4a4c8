"""A run's identity: every setting that changes what it computes, the default run name made from it,
and the refusal to overwrite or continue a file of another identity."""
import hashlib
import json
import os
from dataclasses import asdict, fields

from aft.config import ADDED_FLAGS, BOOKKEEPING, Config
from aft.datasets import DataOptions
from aft.errors import UserError
from aft.methods import default_of, get_method, hyperparameters


def flat_config(cfg):
    """The configuration as one flat dict of flag values, the own-data options and every method
    hyperparameter included (at its default when not given): what results records and checkpoints
    record."""
    flat = asdict(cfg)
    given = flat.pop("method_args")
    flat.update(flat.pop("data"))
    flat.update({f.name: given.get(f.name, default_of(f, cfg.paper_exact)) for f in hyperparameters()})
    return flat


def config_from_flat(flat):
    """A Config from a dict flat_config made (unknown keys left out)."""
    names = {f.name for f in fields(Config)} - {"method_args", "data"}
    method = {f.name for f in hyperparameters()}
    data = {f.name for f in fields(DataOptions)}
    return Config(**{k: v for k, v in flat.items() if k in names},
                  data=DataOptions(**{k: v for k, v in flat.items() if k in data}),
                  method_args={k: v for k, v in flat.items() if k in method})


def ignored_flags(cfg, dataset=None):
    """The flags whose values change nothing the run's method computes: beta without a regulariser
    (init, linear_probe), the hyperparameters of other methods, the teachers' flags without teachers,
    the downstream model's without one (linear_probe), and --no_augment where nothing is a picture to
    augment (`dataset`, an aft.datasets.DatasetEntry, says; under --paper_exact it still chooses the
    paper's batches). They are no part of the run's identity."""
    method = get_method(cfg.method)
    ignored = {f.name for f in hyperparameters()} - {f.name for f in fields(method.Settings)}
    if dataset is not None and dataset.modality != "image" and not cfg.paper_exact:
        ignored.add("no_augment")
    if not method.takes_beta():
        ignored.add("prec")
    if not method.uses_teacher:
        ignored |= {"pretrained_models", "teacher_image_size"}
    if not method.trains_student:
        ignored |= {"model_class", "init_model", "image_size"}
    return ignored


def legacy_identity(cfg, dataset=None):
    """The identity earlier versions of this tool gave a run (every flag but BOOKKEEPING, the methods'
    ignored ones included), under which their files are named: --skip_done and --resume still find
    them."""
    defaults = {**{f.name: f.default for f in fields(Config)}, **{f.name: f.default for f in hyperparameters()},
                **{f.name: f.default for f in fields(DataOptions)}}
    options, data_flags = cfg.data.changed(), {f.name for f in fields(DataOptions)}
    identity = {name: float(value) if isinstance(defaults[name], float) else value
                for name, value in flat_config(cfg).items()
                if name not in BOOKKEEPING and (name not in data_flags or name in options)
                and not (name in ADDED_FLAGS and value == defaults[name])}
    if dataset is not None and dataset.fingerprint:
        identity.update(dataset=dataset.name, data_fingerprint=dataset.fingerprint)
    return identity


def result_identity(cfg, dataset=None):
    """Every setting that changes what a run computes: all flags but BOOKKEEPING and those the method
    ignores (ignored_flags), the own-data options only where they differ from their defaults (so adding
    one renamed no earlier run), and $AFT_IMAGE_SIZE when set. Float flags are kept as floats, so
    `Config(prec=10)` and `--prec=10` (10.0) are the same run. `dataset`: the run's
    aft.datasets.DatasetEntry; your own data is then named by what it is (not how its path was typed),
    with its files' fingerprint."""
    ignored = ignored_flags(cfg, dataset)
    identity = {k: v for k, v in legacy_identity(cfg, dataset).items() if k not in ignored}
    override = os.environ.get("AFT_IMAGE_SIZE", "").strip()
    if override:
        identity["decode_size"] = override
    return identity


def recorded_identity(config, identity=None):
    """The identity a results record or a checkpoint recorded (`identity`); files of earlier code
    recorded only their flat `config`, whose identity (legacy_identity) is all of it but the bookkeeping
    flags, the own-data options and the flags added since at their defaults."""
    if identity is not None:
        return identity
    defaults = {**{f.name: f.default for f in fields(DataOptions)},
                **{f.name: f.default for f in fields(Config) if f.name in ADDED_FLAGS}}
    return {k: v for k, v in config.items() if k not in BOOKKEEPING and not (k in defaults and v == defaults[k])}


def compose_run_name(cfg, identity, dataset=None):
    """The readable settings (beta only where the method has one), then 8 hex digits of the sha256 of
    the whole identity: runs that differ in any setting (steps, batch size, teachers, ...) never share a
    results file."""
    parts = [dataset.name if dataset is not None else cfg.dataset, cfg.model_class, cfg.method]
    parts += [f"prec{cfg.prec:g}"] if "prec" in identity else []
    parts.append(f"lr{cfg.lr:g}")
    if cfg.train_frac != 1:
        parts.append(f"frac{cfg.train_frac:g}")
    parts.append(f"seed{cfg.seed}")
    if cfg.use_val:
        parts.append("val")
    parts.append(hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8])
    return "_".join(parts).replace("/", "-")


def default_run_name(cfg, dataset=None):
    """The name of a run not given --run_name."""
    return compose_run_name(cfg, result_identity(cfg, dataset), dataset)


def legacy_run_name(cfg, dataset=None):
    """The name earlier versions of this tool gave the same run (legacy_identity)."""
    return compose_run_name(cfg, legacy_identity(cfg, dataset), dataset)


def check_same_run(path, then, now, advice):
    """Refuse to overwrite or continue the run recorded in `path` (a results record or a checkpoint,
    whose identity is `then`) unless it is `now`'s. Each differing flag is named as
    `--flag=then (now value)`. A flag only one side has (one that only one of the two methods reads, or
    that other code did not record) counts as differing: a file is never lost on a guess."""
    then = {k: v for k, v in then.items() if k not in BOOKKEEPING}
    changes = [f"--{k}={then[k]} (now {now[k]})" for k in now if k in then and then[k] != now[k]]
    changes += [f"--{k}={now[k]} (not a setting of that run)" for k in now if k not in then]
    changes += [f"--{k}={then[k]} (not a setting of this run)" for k in then if k not in now]
    if changes:
        raise UserError(f"{path} was written with {', '.join(changes)}; {advice}")
