"""A run's identity: every setting that changes what it computes, the default run name made from it,
and the refusal to overwrite or continue a file of another identity."""
import hashlib
import json
from dataclasses import asdict, fields

from aft.config import BOOKKEEPING, Config
from aft.errors import UserError
from aft.methods import hyperparameters


def flat_config(cfg):
    """The configuration as one flat dict of flag values, every method hyperparameter included (at its
    default when not given): what results JSONs and checkpoints record."""
    flat = asdict(cfg)
    given = flat.pop("method_args")
    flat.update({f.name: given.get(f.name, f.default) for f in hyperparameters()})
    return flat


def config_from_flat(flat):
    """A Config from a dict flat_config made (unknown keys left out)."""
    names = {f.name for f in fields(Config)} - {"method_args"}
    method = {f.name for f in hyperparameters()}
    return Config(**{k: v for k, v in flat.items() if k in names},
                  method_args={k: v for k, v in flat.items() if k in method})


def result_identity(cfg):
    """Every setting that changes what a run computes: all flags but BOOKKEEPING. Float flags are kept
    as floats, so `Config(prec=10)` and `--prec=10` (10.0) are the same run."""
    defaults = {**{f.name: f.default for f in fields(Config)}, **{f.name: f.default for f in hyperparameters()}}
    return {name: float(value) if isinstance(defaults[name], float) else value
            for name, value in flat_config(cfg).items() if name not in BOOKKEEPING}


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
    whose flat config dict is `saved`) unless it is this configuration's. Each differing flag is named
    as `--flag=then (now value)`. A flag only one side has counts as differing: a file written by
    other code may not be the same run, and a file is never lost on a guess."""
    now = result_identity(cfg)
    then = {k: v for k, v in saved.items() if k not in BOOKKEEPING}
    changes = [f"--{k}={then[k]} (now {now[k]})" for k in now if k in then and then[k] != now[k]]
    changes += [f"--{k} unrecorded (now {now[k]})" for k in now if k not in then]
    changes += [f"--{k}={then[k]} (no such flag now)" for k in then if k not in now]
    if changes:
        raise UserError(f"{path} was written with {', '.join(changes)}; {advice}")
