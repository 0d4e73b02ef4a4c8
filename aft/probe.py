"""The trainer of a method that trains no downstream model (`linear_probe`): the method's own
classifier on the concatenated cached features of the run's rows, with the run's optimizer, lr, wd,
batch size, steps and cosine schedule. It follows aft.loop's trainer protocol, so it gets the same
loop: evaluations, checkpoints and resume, the NaN stop, the results JSON."""
import torch
import torch.nn.functional as F

from aft.loop import cosine_schedule, make_optimizer
from aft.methods import get_method



class ProbeTrainer:
    def __init__(self, cfg, task, train_idx, eval_split, teachers, device, precision):
        self.cfg, self.device, self.precision = cfg, device, "fp32"  # a linear layer: no autocast
        self.x_train = torch.cat(teachers.train, 1).float().to(device)
        self.y_train = task.train.labels[train_idx].to(device)
        self.x_eval = torch.cat(teachers.eval, 1).float().to(device)
        self.y_eval = eval_split.labels.to(device)
        self.n_train, self.n_eval = len(self.y_train), len(self.y_eval)
        self.model = get_method(cfg.method)(teachers.dims, task.num_classes).to(device)
        self.steps = cfg.steps * task.step_multiplier  # 4 on mnli, qqp, qnli (the paper's), as a student's
        self.optimizer = make_optimizer([{"params": list(self.model.parameters())}], cfg, device)
        self.scheduler = cosine_schedule(self.optimizer, self.steps)
        self.zero = torch.zeros((), device=device)  # R: nothing is regularised

    def widths(self, batches):
        return [None] * len(batches)

    def step(self, idx, width=None):
        loss = F.cross_entropy(self.model(self.x_train[idx]), self.y_train[idx])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        loss = loss.detach()
        return loss, loss, self.zero

    @torch.no_grad()
    def evaluate(self):
        correct = sum((self.model(x).argmax(-1) == y).sum() for x, y in
                      zip(self.x_eval.split(self.cfg.eval_batch_size), self.y_eval.split(self.cfg.eval_batch_size)))
        return int(correct) / self.n_eval

    def state_dict(self):
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict())

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
