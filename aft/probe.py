"""`linear_probe`: a linear classifier on the cached pre-trained features alone (SPEC 3).

No downstream model: the concatenated cached train features of the run's rows are the inputs of one
linear layer trained with CE, with the run's optimizer, lr, wd, batch size, steps and cosine schedule,
evaluated every `eval_steps` on the test features (or, with use_val, on the held-out train rows).
It writes the same results JSON as aft.train.run. It is cheap, so it keeps no checkpoint.
"""
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from aft.errors import UserError
from aft.methods import get_method
from aft.train import cosine_schedule, epoch_batches, finish_run, make_optimizer, start_wandb


def run_probe(cfg, task, caches, train_idx, val_idx, device, run_name, started):
    """Train and evaluate the probe on `caches` (the loaded feature files); returns aft.train.run's
    results dict and writes the same results JSON."""
    train_all = torch.cat([c["train"] for c in caches], 1).float()
    x_train, y_train = train_all[train_idx].to(device), task.train.labels[train_idx].to(device)
    if cfg.use_val:
        x_eval, y_eval = train_all[val_idx].to(device), task.train.labels[val_idx].to(device)
    else:
        x_eval, y_eval = torch.cat([c["test"] for c in caches], 1).float().to(device), task.test.labels.to(device)
    del train_all

    model = nn.Linear(x_train.shape[1], task.num_classes).to(device)
    method = get_method(cfg.method)(x_train.shape[1], [c["train"].shape[1] for c in caches], cfg)
    optimizer = make_optimizer(cfg, model, method, device)
    steps = cfg.steps * task.step_multiplier  # 4 on mnli, qqp, qnli (the paper's), as aft.train
    scheduler = cosine_schedule(optimizer, steps)

    @torch.no_grad()
    def evaluate():
        correct = sum((model(x).argmax(-1) == y).sum() for x, y in
                      zip(x_eval.split(cfg.eval_batch_size), y_eval.split(cfg.eval_batch_size)))
        return int(correct) / len(y_eval)

    wandb_run = start_wandb(cfg, run_name) if cfg.use_wandb else None
    split = "val" if cfg.use_val else "test"
    n_train = len(y_train)
    batches_per_epoch = max(1, n_train // min(cfg.batch_size, n_train))
    step, since, evals = 0, 0, []
    loss_sum = torch.zeros((), device=device)
    while step < steps:
        for idx in epoch_batches(n_train, cfg.batch_size, cfg.seed, step // batches_per_epoch):
            idx = idx.to(device)
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
            step += 1
            if step % cfg.eval_steps == 0 or step == steps:
                loss_m = (loss_sum / (step - since)).item()
                if not math.isfinite(loss_m):
                    raise UserError(f"the loss of the linear probe became NaN or inf by step {step}; lower --lr")
                acc = evaluate()
                evals.append(dict(step=step, loss=loss_m, ce=loss_m, reg=0.0, acc=acc))
                loss_sum.zero_()
                since = step
                print(f"step {step}/{steps} | loss {loss_m:.4f} | {split}_acc {acc:.4f} | "
                      f"{time.time() - started:.0f}s", flush=True)
                if wandb_run is not None:
                    wandb_run.log({"loss": loss_m, "ce": loss_m, f"{split}_acc": acc}, step=step)
            if step >= steps:
                break

    return finish_run(cfg, run_name, steps, split, n_train, len(y_eval), evals, device, "fp32", started, wandb_run)
