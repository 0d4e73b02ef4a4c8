"""The one training loop every run goes through, whatever it trains.

`fit(trainer, plan, started)` runs `trainer.steps` steps over epochs of freshly shuffled
batches, evaluates every `eval_steps`, writes a checkpoint there (and resumes from one), stops at
the first NaN or inf loss, logs to wandb, and writes the results JSON with its provenance (commit,
library versions, command line). A trainer is anything with this small protocol:

    steps, n_train, n_eval, precision        # totals of the run, and the arithmetic it used
    decoded_size, class_names, skipped_rows  # the side its pictures were decoded to (0: kept as they are), the
                                             # classes, the bad rows of your own data left out
    world                                    # this process among those torchrun started (aft.distributed)
    widths(batches) -> per-batch text widths (host side, once per epoch; None for fixed-size inputs); the
                       epoch's batches in order, so pictures kept on disk can be read ahead
    step(idx, width) -> (loss, ce, reg)      # device scalars; idx is a device tensor of train rows
    evaluate() -> accuracy on the evaluation rows
    state_dict() / load_state_dict(state)

The losses stay on the device and are read back only at evaluations, so a step never waits for the
device.

Under torchrun every process runs this loop over the same global batches (`idx` is the whole batch;
the trainer computes its own share, aft.train), so the run is the same on 1 or N processes. The
losses are averaged over the processes at each evaluation; only rank 0 shows progress and writes the
checkpoint, the results JSON and wandb; each process keeps its own RNG state in the checkpoint.
"""
import json
import os
import signal
import sys
import time

import torch
from tqdm import tqdm

from aft.errors import UserError, first_line
from aft.files import atomic_save, safe_load
from aft.identity import check_same_run, flat_config, recorded_identity
from aft.record import RunRecord, provenance


# A test hook, unset in normal use: "RANK:STEP" makes the process of that rank kill itself (SIGKILL)
# right after the checkpoint of that step is in place, so a test interrupts a run at a known point.
KILL_AFTER_CHECKPOINT = "AFT_TEST_KILL_AFTER_CHECKPOINT"


def batch_rows(batch_size, n):
    """The rows of one global batch: --batch_size, or all n train rows when there are fewer."""
    return min(batch_size, n)


def epoch_batches(n, batch_size, seed, epoch):
    """The batches of one epoch: a fresh shuffle per epoch, derived from (seed, epoch) so a resumed
    run sees exactly the batches the uninterrupted run would have."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    size = batch_rows(batch_size, n)
    return list(perm[: n - n % size].split(size))  # equal-size batches: no ragged last step


def fit(trainer, plan, started):
    """Train to the end (resuming from the run's checkpoint when asked); returns its RunRecord."""
    cfg, run_name, ckpt_path = plan.cfg, plan.run_name, plan.ckpt_path
    device, steps, world = trainer.device, trainer.steps, trainer.world
    step, evals = 0, []
    if cfg.resume and ckpt_path and os.path.exists(ckpt_path):
        step, evals = load_checkpoint(ckpt_path, plan, trainer, device)
        print(f"resumed {run_name} from {ckpt_path} at step {step}", flush=True)

    wandb_run = start_wandb(cfg, run_name) if cfg.use_wandb and world.is_main else None
    n_train = trainer.n_train
    batches_per_epoch = max(1, n_train // batch_rows(cfg.batch_size, n_train))
    sums = torch.zeros(3, device=device)  # running loss, ce, reg since the last evaluation
    first_bad = torch.full((), -1, device=device, dtype=torch.long)  # first step with a non-finite loss
    since = step
    split = "val" if cfg.use_val else "test"
    bar = tqdm(total=steps, initial=step, desc=run_name, leave=False, mininterval=2, file=sys.stderr,
               disable=not world.is_main)
    train_seconds, mark = 0.0, time.time()  # the steps' own time, evaluations and checkpoints left out
    while step < steps:
        epoch, offset = divmod(step, batches_per_epoch)
        batches = epoch_batches(n_train, cfg.batch_size, cfg.seed, epoch)[offset:]
        widths = trainer.widths(batches)
        # One host-to-device copy per epoch rather than one (pageable, so synchronous) per step.
        for idx, width in zip(torch.stack(batches).to(device).unbind(0), widths):
            losses = torch.stack(trainer.step(idx, width))
            step += 1
            sums += losses
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(losses[0]),
                                    torch.full_like(first_bad, step), first_bad)
            bar.update(1)
            if step % cfg.eval_steps == 0 or step == steps:
                bad = int(world.min(torch.where(first_bad < 0, steps + 1, first_bad)))  # waits for the steps
                train_seconds += time.time() - mark
                bad = bad if bad <= steps else -1
                if bad >= 0:
                    bar.close()  # the error is then the last line on stderr, not glued to the bar
                    # A checkpoint is written at every evaluation, so the last one holds the last good state.
                    kept = f"; the last good checkpoint is {ckpt_path} (step {evals[-1]['step']})" if ckpt_path and evals else ""
                    raise UserError(f"the loss became NaN or inf at step {bad}{kept}; lower --lr or --prec")
                acc = trainer.evaluate()
                loss_m, ce_m, reg_m = (world.sum(sums) / (world.size * (step - since))).tolist()
                evals.append(dict(step=step, loss=loss_m, ce=ce_m, reg=reg_m, acc=acc))
                sums.zero_()
                since = step
                if world.is_main:
                    tqdm.write(f"step {step}/{steps} | loss {loss_m:.4f} | ce {ce_m:.4f} | reg {reg_m:.4f} | "
                               f"{split}_acc {acc:.4f} | {time.time() - started:.0f}s")
                if wandb_run is not None:
                    wandb_run.log({"loss": loss_m, "ce": ce_m, "reg": reg_m, f"{split}_acc": acc}, step=step)
                if ckpt_path:
                    save_checkpoint(ckpt_path, trainer, step, evals, device, plan)
                mark = time.time()
            if step >= steps:
                break
    bar.close()
    return finish_run(plan, trainer, split, evals, started, wandb_run, train_seconds)


def finish_run(plan, trainer, split, evals, started, wandb_run, train_seconds):
    """The results record of a run, written by rank 0 (and its wandb summary); returns the record."""
    record = RunRecord(run_name=plan.run_name, config=flat_config(plan.cfg), steps=trainer.steps, eval_split=split,
                       n_train=trainer.n_train, n_eval=trainer.n_eval, evals=evals, final_acc=evals[-1]["acc"],
                       device=trainer.device.type, precision=trainer.precision, world_size=trainer.world.size,
                       decoded_size=trainer.decoded_size, seconds=round(time.time() - started, 1),
                       train_seconds=round(train_seconds, 2),
                       provenance=provenance(), identity=plan.identity, dataset=plan.dataset.name,
                       classes=trainer.class_names, skipped_rows=trainer.skipped_rows)
    if trainer.world.is_main:
        record.write(plan.results_path)
    if wandb_run is not None:
        wandb_run.summary["final_acc"] = record.final_acc
        wandb_run.finish()
    return record


def rng_state(device):
    state = {"rng_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(path, trainer, step, evals, device, plan):
    """Rank 0 writes the trainer's state (the same on every rank) and every rank's RNG state."""
    world = trainer.world
    rngs = world.gather_objects(rng_state(device))
    if world.is_main:
        # evals and config as JSON strings: the file stays loadable with weights_only=True
        state = dict(trainer.state_dict(), step=step, evals=json.dumps(evals), config=json.dumps(flat_config(plan.cfg)),
                     identity=json.dumps(plan.identity),
                     **rngs[0])
        if world.size > 1:
            state["rng_ranks"] = rngs
        atomic_save(state, path)
    world.barrier()  # every rank leaves with the checkpoint in place
    if os.environ.get(KILL_AFTER_CHECKPOINT) == f"{world.rank}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


AFRESH = "delete it, or pass another --run_name or --ckpt_dir, to start afresh"


def read_checkpoint(path, mmap=False):
    """(state, identity) of a checkpoint written by save_checkpoint; any other file is refused. With
    mmap the tensors are mapped rather than read: cheap when only the identity is wanted."""
    state = safe_load(path, "checkpoint", mmap=mmap)
    if not isinstance(state, dict) or not {"model", "optimizer", "step", "evals", "rng_cpu"} <= set(state):
        raise UserError(f"{path} is not a checkpoint written by run.py; {AFRESH}")
    identity = json.loads(state["identity"]) if "identity" in state else None
    return state, recorded_identity(json.loads(state.get("config", "{}")), identity)


def load_checkpoint(path, plan, trainer, device):
    """Restore the trainer's state and the RNG from a checkpoint; returns (step, evals). A checkpoint
    of other settings (any flag outside the bookkeeping ones) is refused: resuming it would silently
    mix two runs into one result."""
    state, saved = read_checkpoint(path)
    check_same_run(path, saved, plan.identity, f"resume with the same flags, or {AFRESH}")
    try:
        trainer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as e:
        raise UserError(f"{path} does not fit this model ({first_line(e)}); {AFRESH}") from None
    # Each rank continues its own random numbers (dropout, augmentation) when the checkpoint has them;
    # one written by another number of processes gives every rank rank 0's.
    ranks = state.get("rng_ranks") or []
    rng = ranks[trainer.world.rank] if len(ranks) == trainer.world.size else state
    torch.set_rng_state(rng["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in rng:
        torch.cuda.set_rng_state(rng["rng_cuda"], device)
    return state["step"], json.loads(state["evals"])


def start_wandb(cfg, run_name):
    import wandb
    # Without credentials an online run cannot start; log offline then (`wandb sync` uploads later).
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(project=cfg.wandb_project, name=run_name, config=flat_config(cfg), mode=mode,
                      group=cfg.wandb_group or f"{cfg.dataset}_{cfg.model_class}_{cfg.method}", reinit=True)
