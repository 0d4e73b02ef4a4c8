"""A run's identity: every setting that changes what it computes, the default run name made from it,
and the refusal to overwrite or continue a file of another identity."""
import hashlib
import json
from dataclasses import asdict, fields

from aft.config import BOOKKEEPING, Config
from aft.datasets import DataOptions
from aft.errors import UserError
from aft.methods import hyperparameters


def flat_config(cfg):
    """The configuration as one flat dict of flag values, the own-data options and every method
    hyperparameter included (at its default when not given): what results records and checkpoints
    record."""
    flat = asdict(cfg)
    given = flat.pop("method_args")
    flat.update(flat.pop("data"))
    flat.update({f.name: given.get(f.name, f.default) for f in hyperparameters()})
    return flat


def config_from_flat(flat):
    """A Config from a dict flat_config made (unknown keys left out)."""
    names = {f.name for f in fields(Config)} - {"method_args", "data"}
    method = {f.name for f in hyperparameters()}
    data = {f.name for f in fields(DataOptions)}
    return Config(**{k: v for k, v in flat.items() if k in names},
                  data=DataOptions(**{k: v for k, v in flat.items() if k in data}),
                  method_args={k: v for k, v in flat.items() if k in method})


def result_identity(cfg, dataset=None):
    """Every setting that changes what a run computes: all flags but BOOKKEEPING, the own-data options
    only where they differ from their defaults (so adding one renamed no earlier run). Float flags are
    kept as floats, so `Config(prec=10)` and `--prec=10` (10.0) are the same run. `dataset`: the run's
    aft.datasets.DatasetEntry; your own data is then named by what it is (not how its path was typed),
    with its files' fingerprint."""
    defaults = {**{f.name: f.default for f in fields(Config)}, **{f.name: f.default for f in hyperparameters()},
                **{f.name: f.default for f in fields(DataOptions)}}
    options, data_flags = cfg.data.changed(), {f.name for f in fields(DataOptions)}
    identity = {name: float(value) if isinstance(defaults[name], float) else value
                for name, value in flat_config(cfg).items()
                if name not in BOOKKEEPING and (name not in data_flags or name in options)}
    if dataset is not None and dataset.fingerprint:
        identity.update(dataset=dataset.name, data_fingerprint=dataset.fingerprint)
    return identity


def recorded_identity(config, identity=None):
    """The identity a results record or a checkpoint recorded (`identity`); files of earlier code
    recorded only their flat `config`, whose identity is all of it but the bookkeeping flags."""
    return identity if identity is not None else {k: v for k, v in config.items() if k not in BOOKKEEPING}


def default_run_name(cfg, dataset=None):
    """The readable settings, then 8 hex digits of the sha256 of the whole identity: runs that
    differ in any setting (steps, batch size, teachers, ...) never share a results file."""
    parts = [dataset.name if dataset is not None else cfg.dataset, cfg.model_class, cfg.method, f"prec{cfg.prec:g}",
             f"lr{cfg.lr:g}"]
    if cfg.train_frac != 1:
        parts.append(f"frac{cfg.train_frac:g}")
    parts.append(f"seed{cfg.seed}")
    if cfg.use_val:
        parts.append("val")
    digest = hashlib.sha256(json.dumps(result_identity(cfg, dataset), sort_keys=True).encode()).hexdigest()[:8]
    parts.append(digest)
    return "_".join(parts).replace("/", "-")


def check_same_run(path, then, now, advice):
    """Refuse to overwrite or continue the run recorded in `path` (a results record or a checkpoint,
    whose identity is `then`) unless it is `now`'s. Each differing flag is named as
    `--flag=then (now value)`. A flag only one side has counts as differing: a file written by other
    code may not be the same run, and a file is never lost on a guess."""
    then = {k: v for k, v in then.items() if k not in BOOKKEEPING}
    changes = [f"--{k}={then[k]} (now {now[k]})" for k in now if k in then and then[k] != now[k]]
    changes += [f"--{k} unrecorded (now {now[k]})" for k in now if k not in then]
    changes += [f"--{k}={then[k]} (no such flag now)" for k in then if k not in now]
    if changes:
        raise UserError(f"{path} was written with {', '.join(changes)}; {advice}")
