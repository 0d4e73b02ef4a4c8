"""One run from its configuration to its results: check the flags, load the data and the teachers'
cached features, build the trainer the method asks for, fit, write the results JSON."""
import time

from aft.config import check_config, default_run_name
from aft.datasets import load_task, train_eval_indices
from aft.loop import fit
from aft.methods import get_method
from aft.probe import ProbeTrainer
from aft.runtime import resolve_device, resolve_precision, seed_everything, speed_settings
from aft.teachers import load_teachers
from aft.train import Trainer


def run(cfg):
    """Train, evaluate every `eval_steps`, write the results JSON; returns the results dict."""
    check_config(cfg)
    method = get_method(cfg.method)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    speed_settings(device)
    seed_everything(cfg.seed)
    run_name = cfg.run_name or default_run_name(cfg)
    started = time.time()

    task = load_task(cfg.dataset, cfg.data_dir or None)
    train_idx, val_idx = train_eval_indices(len(task.train), cfg.train_frac, cfg.use_val)
    eval_split = task.train.subset(val_idx) if cfg.use_val else task.test
    teachers = load_teachers(cfg, task, train_idx, val_idx, device, keep_eval=not method.trains_student) \
        if method.uses_teacher else None
    trainer_cls = Trainer if method.trains_student else ProbeTrainer
    trainer = trainer_cls(cfg, task, train_idx, eval_split, teachers, device, precision)
    return fit(trainer, cfg, run_name, started)
