"""The training loop: CE + beta * R for one downstream model, one method, one beta (SPEC 2, 3).

Everything a step touches (inputs, labels, teacher features) is on the device before the first
step; the batch order of each epoch and each batch's text width are computed on the host once per
epoch, so a step never waits for the device. The loss is read back only at evaluation points.
"""
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from aft.datasets import load_task, train_eval_indices
from aft.errors import UserError
from aft.features import atomic_save, feature_path, read_features, safe_load, save_features_command
from aft.methods import get_method
from aft.models import check_modality, create_classifier
from aft.runtime import autocast, resolve_device, resolve_precision, seed_everything, speed_settings


@dataclass
class Config:
    seed: int = 0
    model_class: str = "tiny_bert"
    init_model: str = ""
    dataset: str = "tweets"
    pretrained_models: str = "all-MiniLM-L6-v2"
    train_frac: float = 1.0
    use_val: bool = False
    method: str = "aft"
    prec: float = 10.0  # the demo's beta, chosen on its validation split (README)
    learn_scales: bool = True
    prior_lr: float = 1e-2
    steps: int = 1500
    eval_steps: int = 500
    optimizer: str = "adam"
    batch_size: int = 64
    lr: float = 1e-3
    wd: float = 0.0
    no_augment: bool = True
    use_wandb: bool = False
    wandb_project: str = "aft"
    wandb_group: str = ""
    ckpt_dir: str = ""
    resume: bool = False
    run_name: str = ""
    features_dir: str = "./features"
    data_dir: str = ""
    out_dir: str = "./results"
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    image_size: int = 0
    eval_batch_size: int = 512
    extract_batch_size: int = 256


def default_run_name(cfg):
    parts = [cfg.dataset, cfg.model_class, cfg.method, f"prec{cfg.prec:g}", f"lr{cfg.lr:g}"]
    if cfg.train_frac != 1:
        parts.append(f"frac{cfg.train_frac:g}")
    parts.append(f"seed{cfg.seed}")
    if cfg.use_val:
        parts.append("val")
    return "_".join(parts).replace("/", "-")


def check_config(cfg):
    get_method(cfg.method)
    if cfg.prec < 0:
        raise UserError(f"--prec={cfg.prec} must be >= 0 (it is beta, the regularisation strength)")
    if not 0 < cfg.train_frac <= 1:
        raise UserError(f"--train_frac={cfg.train_frac} must be in (0, 1]")
    for flag in ("steps", "batch_size", "eval_steps"):
        if getattr(cfg, flag) <= 0:
            raise UserError(f"--{flag}={getattr(cfg, flag)} must be > 0")
    if cfg.optimizer not in ("adam", "sgd"):
        raise UserError(f"--optimizer={cfg.optimizer}; valid: adam, sgd")
    if cfg.init_model and cfg.init_model != cfg.model_class:
        raise UserError(f"--init_model={cfg.init_model} must be empty (random init) or equal to "
                        f"--model_class={cfg.model_class} (start from its pre-trained weights)")
    if cfg.resume and not cfg.ckpt_dir:
        raise UserError("--resume needs --ckpt_dir (where the run's checkpoint is)")
    if not get_method(cfg.method).probe:  # a linear probe has no downstream model
        from aft.models import resolve_model
        resolve_model(cfg.model_class)  # an unknown name fails now, not after the dataset is loaded


def load_teacher_features(cfg, task, device):
    """Concatenated train features of every pre-trained model; a missing cache is computed on the spot."""
    from aft.extract import extract_to_cache
    names = [m for m in cfg.pretrained_models.split(",") if m]
    if not names:
        raise UserError(f"--method={cfg.method} needs --pretrained_models (comma-separated model names)")
    caches = []
    for name in names:
        path = feature_path(cfg.features_dir, name, task.name)
        if not os.path.exists(path):
            print(f"features {path} not found: computing them now (same as save_features.py)", flush=True)
            try:
                extract_to_cache(name, task, path, cfg.extract_batch_size, device, cfg.precision,
                                 cfg.image_size or None)
            except UserError as e:
                raise UserError(f"missing feature file {path}, and computing it here failed: {e}; make it where "
                                f"the model loads with: {save_features_command(name, task.name, cfg.features_dir)} "
                                f"and copy it to {path}") from None
        caches.append(read_features(path, name, task.name, len(task.train), len(task.test), cfg.features_dir))
    return caches


def make_optimizer(cfg, model, method, device):
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}] + method.param_groups(cfg)
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.wd, **fused)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.wd, **fused)


def cosine_schedule(optimizer, steps):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def epoch_batches(n, batch_size, seed, epoch):
    """The batches of one epoch: a fresh shuffle per epoch, derived from (seed, epoch) so a resumed
    run sees exactly the batches the uninterrupted run would have."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    size = min(batch_size, n)
    return list(perm[: n - n % size].split(size))  # equal-size batches: no ragged last step


def eval_batches(model, inputs, n, cfg, device, precision):
    """(row indices, logits, phi) of every batch of the first n rows of `inputs`, in eval mode; the
    caller holds torch.inference_mode()."""
    model.eval()
    widths = inputs.widths(list(torch.arange(n).split(cfg.eval_batch_size)))  # host side
    for idx, width in zip(torch.arange(n, device=device).split(cfg.eval_batch_size), widths):
        with autocast(device, precision):
            logits, phi = model(inputs.batch(idx, width))
        yield idx, logits, phi
    model.train()


@torch.inference_mode()
def evaluate(model, inputs, labels, cfg, device, precision):
    correct = torch.zeros((), device=device, dtype=torch.long)
    for idx, logits, _ in eval_batches(model, inputs, len(labels), cfg, device, precision):
        correct += (logits.argmax(-1) == labels[idx]).sum()
    return correct.item() / len(labels)


@torch.inference_mode()
def features(model, inputs, n, cfg, device, precision):
    """phi (n x d, float32) of the first n rows of `inputs`."""
    return torch.cat([phi.float() for _, _, phi in eval_batches(model, inputs, n, cfg, device, precision)])


class Trainer:
    """One downstream model, its method and optimizer, with every input already on the device.

    `step(idx, width)` is the whole per-step work of a run; benchmarks time exactly this.
    """

    def __init__(self, cfg, task, train_idx, eval_split, teacher_train, device, precision):
        method_cls = get_method(cfg.method)
        model, spec = create_classifier(cfg.model_class, task.num_classes, pretrained=bool(cfg.init_model))
        check_modality(spec, task)
        teacher_dims = [t.shape[1] for t in teacher_train]
        self.cfg, self.device, self.precision = cfg, device, precision
        self.model = model.to(device)
        if device.type == "cuda" and spec.modality == "image":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.method = method_cls(model.head.in_features, teacher_dims, cfg).to(device)
        self.psi = torch.cat([t[train_idx] for t in teacher_train], 1).to(device) if teacher_train else None

        # Preprocess once; only the rows trained on are kept.
        image_size = cfg.image_size or None
        self.train_inputs = spec.make_inputs(task.train.subset(train_idx).inputs, task, image_size).to(device)
        self.train_labels = task.train.labels[train_idx].to(device)
        self.eval_inputs = spec.make_inputs(eval_split.inputs, task, image_size).to(device)
        self.eval_labels = eval_split.labels.to(device)
        self.augment = cfg.method == "init" and not cfg.no_augment and task.modality == "image"

        self.steps = cfg.steps * task.step_multiplier  # 4 on mnli, qqp, qnli (the paper's)
        self.optimizer = make_optimizer(cfg, self.model, self.method, device)
        self.scheduler = cosine_schedule(self.optimizer, self.steps)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.model.train()
        self.method.start(lambda: features(self.model, self.train_inputs, len(train_idx), cfg, device, precision),
                          self.train_labels)

    def step(self, idx, width=None):
        """One optimisation step on the train rows `idx` (a device tensor); returns (loss, ce, reg),
        still on the device."""
        with autocast(self.device, self.precision):
            logits, phi = self.forward(self.train_inputs.batch(idx, width, self.augment))
        ce = F.cross_entropy(logits.float(), self.train_labels[idx])
        reg = self.method(phi.float(), self.psi[idx] if self.psi is not None else None)
        loss = ce + self.cfg.prec * reg
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), ce.detach(), reg.detach()

    def evaluate(self):
        return evaluate(self.model, self.eval_inputs, self.eval_labels, self.cfg, self.device, self.precision)

    def state_dict(self):
        return dict(model=self.model.state_dict(), method=self.method.state_dict(),
                    optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict())

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def run(cfg):
    """Train, evaluate every `eval_steps`, write the results JSON; returns the results dict."""
    check_config(cfg)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    speed_settings(device)
    seed_everything(cfg.seed)
    run_name = cfg.run_name or default_run_name(cfg)
    started = time.time()

    task = load_task(cfg.dataset, cfg.data_dir or None)
    train_idx, val_idx = train_eval_indices(len(task.train), cfg.train_frac, cfg.use_val)
    eval_split = task.train.subset(val_idx) if cfg.use_val else task.test
    caches = load_teacher_features(cfg, task, device) if get_method(cfg.method).uses_teacher else []
    if get_method(cfg.method).probe:  # a linear classifier on the cached features; no downstream model
        from aft.probe import run_probe
        return run_probe(cfg, task, caches, train_idx, val_idx, device, run_name, started)
    teacher_train = [c["train"] for c in caches]
    del caches  # the test features are not needed past here
    trainer = Trainer(cfg, task, train_idx, eval_split, teacher_train, device, precision)
    steps = trainer.steps

    ckpt_path = os.path.join(cfg.ckpt_dir, f"{run_name}.pt") if cfg.ckpt_dir else None
    step, evals = 0, []
    if cfg.resume and ckpt_path and os.path.exists(ckpt_path):
        step, evals = load_checkpoint(ckpt_path, cfg, trainer, device)
        print(f"resumed {run_name} from {ckpt_path} at step {step}", flush=True)

    wandb_run = start_wandb(cfg, run_name) if cfg.use_wandb else None
    n_train = len(trainer.train_labels)
    batches_per_epoch = max(1, n_train // min(cfg.batch_size, n_train))
    sums = torch.zeros(3, device=device)  # running loss, ce, reg since the last evaluation
    first_bad = torch.full((), -1, device=device, dtype=torch.long)  # first step with a non-finite loss
    since = step
    split = "val" if cfg.use_val else "test"
    bar = tqdm(total=steps, initial=step, desc=run_name, leave=False, mininterval=2, file=sys.stderr)
    while step < steps:
        epoch, offset = divmod(step, batches_per_epoch)
        batches = epoch_batches(n_train, cfg.batch_size, cfg.seed, epoch)[offset:]
        widths = trainer.train_inputs.widths(batches)
        # One host-to-device copy per epoch rather than one (pageable, so synchronous) per step.
        for idx, width in zip(torch.stack(batches).to(device).unbind(0), widths):
            losses = torch.stack(trainer.step(idx, width))
            step += 1
            sums += losses
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(losses[0]),
                                    torch.full_like(first_bad, step), first_bad)
            bar.update(1)
            if step % cfg.eval_steps == 0 or step == steps:
                bad = int(first_bad)
                if bad >= 0:
                    bar.close()  # the error is then the last line on stderr, not glued to the bar
                    # A checkpoint is written at every evaluation, so the last one holds the last good state.
                    kept = f"; the last good checkpoint is {ckpt_path} (step {evals[-1]['step']})" if ckpt_path and evals else ""
                    raise UserError(f"the loss became NaN or inf at step {bad}{kept}; lower --lr or --prec")
                acc = trainer.evaluate()
                loss_m, ce_m, reg_m = (sums / (step - since)).tolist()
                evals.append(dict(step=step, loss=loss_m, ce=ce_m, reg=reg_m, acc=acc))
                sums.zero_()
                since = step
                tqdm.write(f"step {step}/{steps} | loss {loss_m:.4f} | ce {ce_m:.4f} | reg {reg_m:.4f} | "
                           f"{split}_acc {acc:.4f} | {time.time() - started:.0f}s")
                if wandb_run is not None:
                    wandb_run.log({"loss": loss_m, "ce": ce_m, "reg": reg_m, f"{split}_acc": acc}, step=step)
                if ckpt_path:
                    save_checkpoint(ckpt_path, trainer, step, evals, device, cfg)
            if step >= steps:
                break
    bar.close()

    return finish_run(cfg, run_name, steps, split, n_train, len(trainer.eval_labels), evals, device, precision,
                      started, wandb_run)


def finish_run(cfg, run_name, steps, split, n_train, n_eval, evals, device, precision, started, wandb_run):
    """The results JSON of a run (and its wandb summary); returns the results dict."""
    results = dict(run_name=run_name, config=asdict(cfg), steps=steps, eval_split=split, n_train=n_train,
                   n_eval=n_eval, evals=evals, final_acc=evals[-1]["acc"], device=device.type, precision=precision,
                   seconds=round(time.time() - started, 1))
    write_json(os.path.join(cfg.out_dir, f"{run_name}.json"), results)
    if wandb_run is not None:
        wandb_run.summary["final_acc"] = results["final_acc"]
        wandb_run.finish()
    return results


def save_checkpoint(path, trainer, step, evals, device, cfg):
    # evals and config as JSON strings: the file stays loadable with weights_only=True
    state = dict(trainer.state_dict(), step=step, evals=json.dumps(evals), config=json.dumps(asdict(cfg)),
                 rng_cpu=torch.get_rng_state())
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state()
    atomic_save(state, path)


# Flags that may change when a killed run is resumed: where files go, logging, speed. Any other
# difference would silently mix two runs into one result, so it is refused.
RESUME_MAY_CHANGE = {"resume", "ckpt_dir", "run_name", "use_wandb", "wandb_project", "wandb_group", "features_dir",
                     "data_dir", "out_dir", "device", "compile", "eval_steps", "eval_batch_size", "extract_batch_size"}


def load_checkpoint(path, cfg, trainer, device):
    """Restore model, method, optimizer, schedule and RNG from a checkpoint; returns (step, evals)."""
    state = safe_load(path, "checkpoint")
    afresh = "delete it, or pass another --run_name or --ckpt_dir, to start afresh"
    if not isinstance(state, dict) or not {"model", "optimizer", "step", "evals", "rng_cpu"} <= set(state):
        raise UserError(f"{path} is not a checkpoint written by run.py; {afresh}")
    saved, now = json.loads(state.get("config", "{}")), asdict(cfg)
    changed = [k for k in saved if k in now and k not in RESUME_MAY_CHANGE and saved[k] != now[k]]
    if changed:
        was = ", ".join(f"--{k}={saved[k]} (now {now[k]})" for k in changed)
        raise UserError(f"{path} was written with {was}; resume with the same flags, or {afresh}")
    try:
        trainer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as e:
        raise UserError(f"{path} does not fit this model ({str(e).strip().splitlines()[0][:160]}); {afresh}") from None
    torch.set_rng_state(state["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"])
    return state["step"], json.loads(state["evals"])


def write_json(path, obj):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def start_wandb(cfg, run_name):
    import wandb
    # Without credentials an online run cannot start; log offline then (`wandb sync` uploads later).
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(project=cfg.wandb_project, name=run_name, config=asdict(cfg), mode=mode,
                      group=cfg.wandb_group or f"{cfg.dataset}_{cfg.model_class}_{cfg.method}", reinit=True)
