"""One run from its configuration to its results: make the run's plan (every check that needs no
data), make sure no other run's results or checkpoint would be overwritten (or skip a run already
done, with --skip_done), load the data and the teachers' cached features, build the trainer the
method asks for, run the method's preparation, fit, write the results record."""
import os
import sys
import time
from contextlib import nullcontext

import torch

from aft.datasets import check_train_rows, load_entry
from aft.distributed import SINGLE
from aft.errors import UserError
from aft.identity import check_same_run, legacy_identity, recorded_identity
from aft.loop import AFRESH, fit, read_checkpoint
from aft.optim import batch_rows
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
    done, resume = earlier_run(plan)
    if done is not None:
        return done
    speed_settings(plan.device, plan.precision)
    seed_everything(cfg.seed)
    began = time.time()

    with world.main_first():  # rank 0 decodes the pictures once; the others read its decoded file
        task = load_entry(plan.dataset, cfg.data_dir or None, plan.decode_size)
    train_idx, val_idx = plan.rows(len(task.train))
    check_train_rows(task.name, len(task.train), len(train_idx), cfg.train_frac, plan.holds_out,
                     len(task.train.labels.unique()))  # the classes its train split has
    check_batches(plan, len(train_idx))
    eval_split = (task.train.subset(val_idx) if plan.holds_out else task.val) if cfg.use_val else task.test
    method = plan.method
    probe_eval = ("held_out" if plan.holds_out else "val" if cfg.use_val else "test") if not method.trains_student \
        else None
    teachers = load_teachers(plan, task, train_idx, val_idx, probe_eval) if method.uses_teacher else None
    trainer = (Trainer if method.trains_student else ProbeTrainer)(plan, task, train_idx, eval_split, teachers)
    start(trainer, plan, teachers)
    return fit(trainer, plan, began, resume)


def start(trainer, plan, teachers):
    """Run the method's preparation (B-Tuning's LogME weights, factor transfer's autoencoders) and hand
    its result to the trainer, before the first step."""
    prepared = None
    if plan.method.preparation:
        preparation = PREPARATIONS.get(plan.method.preparation)
        # rank 0 first where the preparation writes a file that all read (ft's autoencoders); else all at once
        with plan.world.main_first() if preparation.writes_files else nullcontext():
            prepared = preparation.run(trainer.method, trainer.student, trainer.train_labels, teachers,
                                       plan.cfg.paper_exact)
    trainer.start(prepared)


def check_batches(plan, n_rows):
    """The batches the run's n_rows train rows make, before any work: a train set smaller than
    --batch_size is one global batch of all its rows (said in a warning), which must divide evenly among
    the processes (each computes an equal share of every batch); and a downstream model with BatchNorm
    needs two rows or more in each process's share."""
    cfg, world = plan.cfg, plan.world
    batch = batch_rows(cfg.batch_size, n_rows)
    if batch < cfg.batch_size:
        print(f"warning: --batch_size={cfg.batch_size} is more than the {n_rows} training rows: every step uses all "
              f"{n_rows}", file=sys.stderr, flush=True)
    if batch % world.size:
        raise UserError(f"the global batch is all {batch} train rows (fewer than --batch_size) and must divide "
                        f"evenly among the {world.size} processes; change --train_frac, or run on a number of "
                        f"processes that divides {batch}")
    if batch // world.size == 1 and plan.student is not None and has_batch_norm(plan.student):
        shared = f" shared by {world.size} processes" if world.size > 1 else ""
        raise UserError(f"a batch of {batch} row{'' if batch == 1 else 's'}{shared} gives each step 1 row, and "
                        f"{plan.student.name}'s BatchNorm needs 2 or more in training; use --batch_size="
                        f"{2 * world.size} or more")


def has_batch_norm(spec):
    """Whether the model has a BatchNorm layer: its architecture built on the meta device (no memory)."""
    try:
        with torch.device("meta"):
            body, head = spec.build(False, num_classes=2)
    except Exception:  # an architecture the meta device cannot build: the first step says it, if it must
        return False
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in body.modules())


def earlier_run(plan):
    """What this run's name already holds on disk: (the record to return, the checkpoint to resume
    from). A results record or a checkpoint of another configuration is refused: it would be
    overwritten (or, on --resume, continued; fit refuses that). A record of this configuration is
    returned when --skip_done asks to skip it (else the run is redone: that loses nothing). The files
    of the same run named by earlier versions of this tool (plan.legacy_name) count too: they are
    skipped or resumed, never overwritten."""
    cfg, path, ckpt = plan.cfg, plan.results_path, plan.ckpt_path
    if os.path.exists(path):
        saved = RunRecord.read(path)
        check_same_run(path, recorded_identity(saved.config, saved.identity), plan.identity,
                       "pass another --run_name or --out_dir, or delete it to replace it")
        if cfg.skip_done:
            print(f"done already: {path}", flush=True)
            return saved, None
    elif plan.legacy_name and cfg.skip_done:
        old = os.path.join(cfg.out_dir, f"{plan.legacy_name}.json")
        saved = RunRecord.read(old) if os.path.exists(old) else None
        if saved is not None and legacy_match(saved.config, plan):
            print(f"done already: {old}", flush=True)
            return saved, None
    if ckpt and not cfg.resume and os.path.exists(ckpt):
        check_same_run(ckpt, read_checkpoint(ckpt, mmap=True)[1], plan.identity, AFRESH)
    if ckpt and cfg.resume and not os.path.exists(ckpt) and plan.legacy_name:
        old = os.path.join(cfg.ckpt_dir, f"{plan.legacy_name}.pt")
        saved = read_checkpoint(old, mmap=True)[1] if os.path.exists(old) else None
        if saved is not None and legacy_match(saved, plan):
            return None, (old, saved)
    return None, None


def legacy_match(saved, plan):
    """Whether a file named as earlier versions named this run (`saved`: its flat config or identity)
    is this run's."""
    return recorded_identity(saved) == legacy_identity(plan.cfg, plan.dataset)
