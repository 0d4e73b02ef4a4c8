"""The one training loop every run goes through, whatever it trains.

`fit(trainer, plan, started)` runs `trainer.steps` steps over epochs of freshly shuffled
batches, evaluates every `eval_steps`, writes a checkpoint there (and resumes from one), stops at
the first NaN or inf loss, logs to wandb, and writes the results JSON with its provenance (commit,
library versions, command line). A trainer is anything with this small protocol:

    steps, n_train, n_eval, precision        # totals of the run, and the arithmetic it used
    batching                                 # its batches of each epoch (aft.optim.Batching)
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
import random
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import asdict

import torch
from tqdm import tqdm

from aft.errors import UserError, first_line
from aft.files import atomic_save, safe_load
from aft.identity import check_same_run, flat_config, recorded_identity
from aft.record import RunRecord, provenance


# A test hook, unset in normal use: "RANK:STEP" makes the process of that rank kill itself (SIGKILL)
# right after the checkpoint of that step is in place, so a test interrupts a run at a known point.
KILL_AFTER_CHECKPOINT = "AFT_TEST_KILL_AFTER_CHECKPOINT"


def fit(trainer, plan, started, resume=None):
    """Train to the end (resuming from the run's checkpoint when asked); returns its RunRecord.
    `resume`: (path, identity) of a checkpoint of this run under the name earlier versions gave it."""
    cfg, run_name, ckpt_path = plan.cfg, plan.run_name, plan.ckpt_path
    device, steps, world = trainer.device, trainer.steps, trainer.world
    progress = Progress(device)
    if cfg.resume and ckpt_path and os.path.exists(ckpt_path):
        resume = ckpt_path, plan.identity
    if resume:
        progress = load_checkpoint(resume[0], resume[1], trainer, device)
        print(f"resumed {run_name} from {resume[0]} at step {progress.step}", flush=True)
    elif cfg.resume:
        print(f"note: no checkpoint of this run in {cfg.ckpt_dir} ({run_name}.pt): starting at step 0", flush=True)

    wandb_run = start_wandb(plan) if cfg.use_wandb and world.is_main else None
    batching = trainer.batching
    split = "val" if cfg.use_val else "test"
    bar = tqdm(total=steps, initial=progress.step, desc=run_name, leave=False, mininterval=2, file=sys.stderr,
               disable=not world.is_main)
    mark = time.time()  # the steps' own time is counted, evaluations and checkpoints left out
    with Interruption(world) as interruption:
        while progress.step < steps:
            epoch, offset = divmod(progress.step, batching.per_epoch)
            batches = batching.batches(epoch)[offset:]
            widths = trainer.widths(batches)
            # One host-to-device copy per epoch rather than one (pageable, so synchronous) per step.
            device_batches = torch.cat(batches).to(device).split([len(b) for b in batches])
            for idx, width in zip(device_batches, widths):
                progress.add(torch.stack(trainer.step(idx, width)))
                bar.update(1)
                step = progress.step
                if step % cfg.eval_steps == 0 or step == steps:
                    bad = int(world.min(torch.where(progress.first_bad < 0, steps + 1, progress.first_bad)))
                    progress.train_seconds += time.time() - mark  # `bad` waited for the steps
                    if bad <= steps:
                        bar.close()  # the error is then the last line on stderr, not glued to the bar
                        # A checkpoint is written at every evaluation, so the last one holds the last good state.
                        kept = f"; the last good checkpoint is {ckpt_path} (step {progress.evals[-1]['step']})" \
                            if ckpt_path and progress.evals else ""
                        raise UserError(f"the loss became NaN or inf at step {bad}{kept}; lower --lr or --prec")
                    acc = trainer.evaluate()
                    loss_m, ce_m, reg_m = progress.evaluated(step, acc, world)
                    if world.is_main:
                        tqdm.write(f"step {step}/{steps} | loss {loss_m:.4f} | ce {ce_m:.4f} | reg {reg_m:.4f} | "
                                   f"{split}_acc {acc:.4f} | {time.time() - started:.0f}s")
                    if wandb_run is not None:
                        wandb_run.log({"loss": loss_m, "ce": ce_m, "reg": reg_m, f"{split}_acc": acc}, step=step)
                    if ckpt_path:
                        save_checkpoint(ckpt_path, trainer, progress, device, plan)
                    mark = time.time()
                if interruption.stopped(step):
                    bar.close()
                    progress.train_seconds += time.time() - mark
                    if ckpt_path and step % cfg.eval_steps and step != steps:  # else it was just written
                        save_checkpoint(ckpt_path, trainer, progress, device, plan)
                    raise interruption.stop(step, steps, ckpt_path)
                if step >= steps:
                    break
    bar.close()
    return finish_run(plan, trainer, split, progress, started, wandb_run)


class Progress:
    """Where a run is: its step, its evaluations so far, the losses summed since the last one (on the
    device), the first step with a non-finite loss, the training steps' seconds. A checkpoint keeps
    all of it, so a run resumed from any step ends as the uninterrupted one."""

    def __init__(self, device, step=0, evals=(), sums=None, since=0, first_bad=-1, train_seconds=0.0):
        self.step, self.evals, self.since, self.train_seconds = step, list(evals), since, train_seconds
        self.sums = torch.zeros(3, device=device) if sums is None else sums.to(device)  # loss, ce, reg
        self.first_bad = torch.full((), first_bad, device=device, dtype=torch.long)

    def add(self, losses):
        self.step += 1
        self.sums += losses
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(losses[0]),
                                     torch.full_like(self.first_bad, self.step), self.first_bad)

    def evaluated(self, step, acc, world):
        """Record the evaluation at `step`; returns the mean loss, ce and reg since the last one."""
        loss_m, ce_m, reg_m = (world.sum(self.sums) / (world.size * (step - self.since))).tolist()
        self.evals.append(dict(step=step, loss=loss_m, ce=ce_m, reg=reg_m, acc=acc))
        self.sums.zero_()
        self.since = step
        return loss_m, ce_m, reg_m

    def state(self, world):
        """What a checkpoint keeps (a collective call: every rank makes it). The losses summed since the
        last evaluation differ per rank; each rank resumes with their mean, so their sum over the ranks
        at the next evaluation is the uninterrupted run's."""
        sums = world.sum(self.sums.clone()) / world.size
        return dict(step=self.step, evals=json.dumps(self.evals), sums=sums.cpu(), since=self.since,
                    first_bad=int(self.first_bad), train_seconds=self.train_seconds)

    @classmethod
    def from_state(cls, state, device):
        return cls(device, state["step"], json.loads(state["evals"]), state.get("sums"),
                   state.get("since", state["step"]), state.get("first_bad", -1), state.get("train_seconds", 0.0))


# A test hook, unset in normal use: "SIGNAL:RANK:STEP[:MARKER]" (SIGINT or SIGTERM) makes the process
# of that rank send itself the signal after that step, so a test interrupts a run at a known point;
# with MARKER (a file path), only while that file does not exist yet (it is made then): once.
SIGNAL_AT_STEP = "AFT_TEST_SIGNAL_AT_STEP"
CHECK_EVERY = 4  # under torchrun, the processes agree on a signal every this many steps (one small all-reduce)


class Interruption:
    """SIGINT (Ctrl-C) and SIGTERM (Slurm's pre-emption and --requeue) while training: noted when they
    come, acted on between steps (stopped()), when every process of the run stops at the same step: a
    checkpoint is written there and one line says how to resume. A second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, world):
        self.world, self.signal, self.previous = world, None, {}
        hook = os.environ.get(SIGNAL_AT_STEP, "")
        self.hook = hook.split(":") if hook else None

    def __enter__(self):
        import threading
        if threading.current_thread() is threading.main_thread():  # Python's handlers live on the main thread
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self.noted)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def noted(self, signum, frame):
        if self.signal is not None:  # a second one: stop now, without a checkpoint
            raise KeyboardInterrupt
        self.signal = signum

    def stopped(self, step):
        """Whether the run stops after `step`: this process got a signal, or, under torchrun, any of them
        (checked every CHECK_EVERY steps, so that no step waits for the others for it)."""
        if self.hook and int(self.hook[1]) == self.world.rank and int(self.hook[2]) == step:
            marker = self.hook[3] if len(self.hook) > 3 else None
            if not (marker and os.path.exists(marker)):
                if marker:
                    open(marker, "w").close()
                os.kill(os.getpid(), getattr(signal, self.hook[0]))
        if self.world.size == 1:
            return self.signal is not None
        if step % CHECK_EVERY:
            return False
        flag = torch.tensor([self.signal or 0], dtype=torch.long)
        if torch.distributed.get_backend() == "nccl":
            flag = flag.cuda()
        self.signal = int(self.world.max(flag)) or None
        return self.signal is not None

    def stop(self, step, steps, ckpt_path):
        """The one line (and exit status 128 + the signal's number) of a run interrupted after `step`."""
        name = signal.Signals(self.signal).name
        if ckpt_path:
            flags = [a for a in sys.argv[1:] if not a.startswith("--resume")]
            again = "the same torchrun command with --resume=True" if self.world.size > 1 else \
                shlex.join(["python", sys.argv[0], *flags, "--resume=True"])
            text = f"{name}: stopped at step {step} of {steps}; checkpoint {ckpt_path}; resume with: {again}"
        else:
            text = (f"{name}: stopped at step {step} of {steps}, and nothing was saved (no --ckpt_dir); to make a run "
                    f"resumable, give it --ckpt_dir=DIR: it then saves at every evaluation and when stopped")
        return Stopped(text, 128 + self.signal)


class Stopped(UserError):
    """A run stopped by a signal; the scripts exit with `status` (128 + the signal's number, as a shell
    reports a process killed by it)."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


def finish_run(plan, trainer, split, progress, started, wandb_run):
    """The results record of a run, written by rank 0 (and its wandb summary); returns the record."""
    record = RunRecord(run_name=plan.run_name, config=flat_config(plan.cfg), steps=trainer.steps, eval_split=split,
                       n_train=trainer.n_train, n_eval=trainer.n_eval, evals=progress.evals,
                       final_acc=progress.evals[-1]["acc"], device=trainer.device.type, precision=trainer.precision,
                       world_size=trainer.world.size, decoded_size=trainer.decoded_size,
                       seconds=round(time.time() - started, 1), train_seconds=round(progress.train_seconds, 2),
                       provenance=provenance(), identity=plan.identity, dataset=plan.dataset.name,
                       classes=trainer.class_names, skipped_rows=trainer.skipped_rows)
    if trainer.world.is_main:
        write_record(record, plan.results_path)
    if wandb_run is not None:
        wandb_run.summary["final_acc"] = record.final_acc
        wandb_run.finish()
    return record


def write_record(record, path):
    """The record at `path`; when that fails at the end of a run (a full disk), in a file of the
    temporary folder instead, or printed whole: the result is never lost, and one line says where."""
    try:
        return record.write(path)
    except OSError as e:
        problem = first_line(e)
    fallback = os.path.join(tempfile.gettempdir(), f"aft-results-{os.getpid()}-{os.path.basename(path)}")
    try:
        record.write(fallback)
        where = f"it is in {fallback} instead"
    except OSError:
        print(json.dumps(asdict(record)), flush=True)
        where = "it is printed above, whole"
    raise UserError(f"the results could not be written to {path} ({problem}); {where}: move it there once there is "
                    f"room")


def rng_state(device):
    # Python's own: timm's training transform draws from it (--paper_exact's augmentation)
    state = {"rng_cpu": torch.get_rng_state(), "rng_python": random.getstate()}
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(path, trainer, progress, device, plan):
    """Rank 0 writes the trainer's state (the same on every rank), the run's progress and every rank's
    RNG state; a write that fails (a full disk, a folder made read-only) is one line."""
    world, step = trainer.world, progress.step
    rngs = world.gather_objects(rng_state(device))
    progress_state = progress.state(world)
    if world.is_main:
        # evals and config as JSON strings: the file stays loadable with weights_only=True
        state = dict(trainer.state_dict(), **progress_state, config=json.dumps(flat_config(plan.cfg)),
                     identity=json.dumps(plan.identity), **rngs[0])
        if world.size > 1:
            state["rng_ranks"] = rngs
        try:
            atomic_save(state, path)
        except OSError as e:
            raise UserError(f"cannot write the checkpoint {path} at step {step} ({first_line(e)}); give --ckpt_dir "
                            f"a folder with room, and --resume=True continues from the last checkpoint written")
    world.barrier()  # every rank leaves with the checkpoint in place
    if os.environ.get(KILL_AFTER_CHECKPOINT) == f"{world.rank}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


AFRESH = "delete it, or pass another --run_name or --ckpt_dir, to start afresh"


def read_checkpoint(path, mmap=False):
    """(state, identity) of a checkpoint written by save_checkpoint; any other file is refused. With
    mmap the tensors are mapped rather than read: cheap when only the identity is wanted."""
    state = safe_load(path, "checkpoint", mmap=mmap, fix=AFRESH)
    if not isinstance(state, dict) or not {"model", "optimizer", "step", "evals", "rng_cpu"} <= set(state):
        raise UserError(f"{path} is not a checkpoint written by run.py; {AFRESH}")
    identity = json.loads(state["identity"]) if "identity" in state else None
    return state, recorded_identity(json.loads(state.get("config", "{}")), identity)


def load_checkpoint(path, identity, trainer, device):
    """Restore the trainer's state and the RNG from a checkpoint; returns its Progress. A checkpoint
    of other settings than `identity`'s (any flag outside the bookkeeping ones) is refused: resuming it
    would silently mix two runs into one result."""
    state, saved = read_checkpoint(path)
    check_same_run(path, saved, identity, f"resume with the same flags, or {AFRESH}")
    try:
        trainer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as e:
        raise UserError(f"{path} does not fit this model ({first_line(e)}); {AFRESH}") from None
    # Each rank continues its own random numbers (dropout, augmentation) when the checkpoint has them;
    # one written by another number of processes gives every rank rank 0's.
    ranks = state.get("rng_ranks") or []
    rng = ranks[trainer.world.rank] if len(ranks) == trainer.world.size else state
    torch.set_rng_state(rng["rng_cpu"])
    if "rng_python" in rng:
        random.setstate(rng["rng_python"])
    if device.type == "cuda" and "rng_cuda" in rng:
        torch.cuda.set_rng_state(rng["rng_cuda"], device)
    return Progress.from_state(state, device)


def start_wandb(plan):
    """The run's Weights & Biases run, its files in {out_dir}/wandb (wandb makes that folder in `dir`), not
    in the current folder. wandb is optional: only this flag needs it, and plan checks that it is
    installed before any work."""
    import wandb
    cfg = plan.cfg
    # Without credentials an online run cannot start; log offline then (`wandb sync` uploads later).
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    os.makedirs(cfg.out_dir, exist_ok=True)
    return wandb.init(project=cfg.wandb_project, name=plan.run_name, config=flat_config(cfg), mode=mode,
                      dir=cfg.out_dir,
                      group=cfg.wandb_group or f"{cfg.dataset}_{cfg.model_class}_{cfg.method}",
                      reinit="finish_previous")

