"""One run from its configuration to its results: make the run's plan (every check that needs no
data), make sure no other run's results or checkpoint would be overwritten (or skip a run already
done, with --skip_done), load the data and the teachers' cached features, build the trainer the
method asks for, run the method's preparation, fit, write the results record."""
import os
import time
from contextlib import nullcontext

from aft.datasets import check_train_rows, load_entry
from aft.distributed import SINGLE
from aft.errors import UserError
from aft.identity import check_same_run, recorded_identity
from aft.loop import AFRESH, batch_rows, fit, read_checkpoint
from aft.plan import make_plan
from aft.prepare import PREPARATIONS
from aft.probe import ProbeTrainer
from aft.record import RunRecord
from aft.runtime import seed_everything, speed_settings
from aft.teachers import load_teachers
from aft.train import Trainer


def run(cfg, world=SINGLE):
    """Train, evaluate every `eval_steps`, write the results record; returns it (with --skip_done,
    that of the identical run already done, if there is one). `world`: this process among those
    torchrun started, its process group already joined (aft.distributed.start)."""
    plan = make_plan(cfg, world)
    done = earlier_run(plan)
    if done is not None:
        return done
    speed_settings(plan.device, plan.precision)
    seed_everything(cfg.seed)
    began = time.time()

    with world.main_first():  # rank 0 decodes the pictures once; the others read its decoded file
        task = load_entry(plan.dataset, cfg.data_dir or None, plan.decode_size)
    train_idx, val_idx = plan.rows(len(task.train))
    check_train_rows(task.name, len(task.train), len(train_idx), cfg.train_frac, plan.holds_out)
    check_batch_shares(batch_rows(cfg.batch_size, len(train_idx)), cfg, world)
    eval_split = (task.train.subset(val_idx) if plan.holds_out else task.val) if cfg.use_val else task.test
    method = plan.method
    probe_eval = ("held_out" if plan.holds_out else "val" if cfg.use_val else "test") if not method.trains_student \
        else None
    teachers = load_teachers(plan, task, train_idx, val_idx, probe_eval) if method.uses_teacher else None
    trainer = (Trainer if method.trains_student else ProbeTrainer)(plan, task, train_idx, eval_split, teachers)
    start(trainer, plan, teachers)
    return fit(trainer, plan, began)


def start(trainer, plan, teachers):
    """Run the method's preparation (B-Tuning's LogME weights, factor transfer's autoencoders) and hand
    its result to the trainer, before the first step."""
    prepared = None
    if plan.method.preparation:
        preparation = PREPARATIONS.get(plan.method.preparation)
        # rank 0 first where the preparation writes a file that all read (ft's autoencoders); else all at once
        with plan.world.main_first() if preparation.writes_files else nullcontext():
            prepared = preparation.run(trainer.method, trainer.student, trainer.train_labels, teachers)
    trainer.start(prepared)


def check_batch_shares(batch, cfg, world):
    """A train set smaller than --batch_size is one global batch of all its rows, which must divide
    evenly among the processes: each computes an equal share of every batch."""
    if batch % world.size:
        raise UserError(f"the global batch is all {batch} train rows (fewer than --batch_size) and must divide "
                        f"evenly among the {world.size} processes; change --train_frac, or run on a number of "
                        f"processes that divides {batch}")


def earlier_run(plan):
    """What this run's name already holds on disk. A results record or a checkpoint of another
    configuration is refused: it would be overwritten (or, on --resume, continued; fit refuses
    that). A record of this configuration is returned when --skip_done asks to skip it;
    None: train (redoing an identical run loses nothing)."""
    cfg, path, ckpt = plan.cfg, plan.results_path, plan.ckpt_path
    if os.path.exists(path):
        saved = RunRecord.read(path)
        check_same_run(path, recorded_identity(saved.config, saved.identity), plan.identity,
                       "pass another --run_name or --out_dir, or delete it to replace it")
        if cfg.skip_done:
            print(f"done already: {path}", flush=True)
            return saved
    if ckpt and not cfg.resume and os.path.exists(ckpt):
        check_same_run(ckpt, read_checkpoint(ckpt, mmap=True)[1], plan.identity, AFRESH)
    return None
