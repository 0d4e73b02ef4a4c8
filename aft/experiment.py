"""One run from its configuration to its results: check the flags, make sure no other run's results
or checkpoint would be overwritten (or skip a run already done, with --skip_done), load the data and
the teachers' cached features, build the trainer the method asks for, fit, write the results JSON."""
import json
import os
import time

from aft.config import check_config, check_same_run, default_run_name
from aft.datasets import check_train_rows, load_task, train_eval_indices
from aft.datasets.decode import decode_size
from aft.distributed import SINGLE
from aft.errors import UserError, first_line
from aft.loop import AFRESH, batch_rows, fit, read_checkpoint
from aft.methods import get_method
from aft.models import resolve_model
from aft.probe import ProbeTrainer
from aft.runtime import resolve_device, resolve_precision, seed_everything, speed_settings
from aft.teachers import load_teachers, uncached_teachers
from aft.train import Trainer


def run(cfg, world=SINGLE):
    """Train, evaluate every `eval_steps`, write the results JSON; returns the results dict (with
    --skip_done, that of the identical run already done, if there is one). `world`: this process
    among those torchrun started, its process group already joined (aft.distributed.start)."""
    check_config(cfg)
    check_batch_shares(cfg.batch_size, cfg, world)  # before any work; again below once the train rows are known
    run_name = cfg.run_name or default_run_name(cfg)
    done = earlier_run(cfg, run_name)
    if done is not None:
        return done
    method = get_method(cfg.method)
    device = world.device(resolve_device(cfg.device))
    precision = resolve_precision(cfg.precision, device)
    speed_settings(device, precision)
    seed_everything(cfg.seed)
    started = time.time()

    side = world.gather_objects(pictures_side(cfg, method))[0]
    with world.main_first():  # rank 0 decodes the pictures once; the others read its decoded file
        task = load_task(cfg.dataset, cfg.data_dir or None, side)
    train_idx, val_idx = train_eval_indices(len(task.train), cfg.train_frac, cfg.use_val)
    check_train_rows(task.name, len(task.train), len(train_idx), cfg.train_frac, cfg.use_val)
    check_batch_shares(batch_rows(cfg.batch_size, len(train_idx)), cfg, world)
    eval_split = task.train.subset(val_idx) if cfg.use_val else task.test
    teachers = load_teachers(cfg, task, train_idx, val_idx, device, keep_eval=not method.trains_student,
                             world=world) if method.uses_teacher else None
    trainer_cls = Trainer if method.trains_student else ProbeTrainer
    trainer = trainer_cls(cfg, task, train_idx, eval_split, teachers, device, precision, world)
    return fit(trainer, cfg, run_name, started)


def check_batch_shares(batch, cfg, world):
    """The global batch (--batch_size, or all of a smaller train set) must divide evenly among the
    processes: each computes an equal share of every batch."""
    if not batch % world.size:
        return
    if batch == cfg.batch_size:
        raise UserError(f"--batch_size={cfg.batch_size} is the batch of all {world.size} processes together and "
                        f"must divide evenly among them; use a multiple of {world.size}")
    raise UserError(f"the global batch is all {batch} train rows (fewer than --batch_size) and must divide "
                    f"evenly among the {world.size} processes; change --train_frac, or run on a number of "
                    f"processes that divides {batch}")


def pictures_side(cfg, method):
    """The side pictures of varying size are decoded at for this run: the largest that a model reading
    them in this run resizes them to (the downstream model, and the pre-trained models whose features
    are computed now), so none of them sees an upsampled copy."""
    sizes = [resolve_model(cfg.model_class).pixels(cfg.image_size or None)] if method.trains_student else []
    if method.uses_teacher:
        sizes += [resolve_model(name).pixels(cfg.teacher_image_size or None) for name in uncached_teachers(cfg)]
    return decode_size(sizes)


def earlier_run(cfg, run_name):
    """What this run's name already holds on disk. A results JSON or a checkpoint of another
    configuration is refused: it would be overwritten (or, on --resume, continued; fit refuses
    that). A results JSON of this configuration is returned when --skip_done asks to skip it;
    None: train (redoing an identical run loses nothing)."""
    path = os.path.join(cfg.out_dir, f"{run_name}.json")
    if os.path.exists(path):
        saved = read_results(path)
        check_same_run(path, saved["config"], cfg, "pass another --run_name or --out_dir, or delete it to replace it")
        if cfg.skip_done:
            print(f"done already: {path}", flush=True)
            return saved
    ckpt = os.path.join(cfg.ckpt_dir, f"{run_name}.pt") if cfg.ckpt_dir else None
    if ckpt and not cfg.resume and os.path.exists(ckpt):
        check_same_run(ckpt, read_checkpoint(ckpt, mmap=True)[1], cfg, AFRESH)
    return None


def read_results(path):
    """A results JSON written by run.py; any other file is refused rather than overwritten."""
    try:
        with open(path) as f:
            saved = json.load(f)
        if isinstance(saved, dict) and isinstance(saved.get("config"), dict):
            return saved
        problem = "it has no config"
    except (OSError, ValueError) as e:
        problem = first_line(e)
    raise UserError(f"{path} is not a results JSON of run.py ({problem}); pass another --run_name or --out_dir, "
                    "or move it away")
