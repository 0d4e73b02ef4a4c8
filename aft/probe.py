"""The trainer of a method that trains no downstream model (`linear_probe`): the method's own
classifier on the cached features of the run's rows (side by side, or their tensor product where the
method reads one), with the run's optimizer, lr, wd, batch size, steps and cosine schedule. It follows
aft.loop's trainer protocol, so it gets the same loop: evaluations, checkpoints and resume, the NaN
stop, the results JSON; under torchrun, as aft.train: each process its share of every global batch,
the gradients averaged (DistributedDataParallel), evaluation shared out."""
import torch
import torch.nn.functional as F

from aft.optim import batch_rows, batching, make_optimizer
from aft.product import join_features


class ProbeTrainer:
    def __init__(self, plan, task, train_idx, eval_split, teachers):
        cfg, method_cls, device, world = plan.cfg, plan.method, plan.device, plan.world
        self.cfg, self.device, self.precision, self.world = cfg, device, "fp32", world  # a linear layer: no autocast
        product = method_cls.reads_product(task.modality, cfg.paper_exact)
        self.x_train = join_features([t.float() for t in teachers.train], product).to(device)
        self.y_train = task.train.labels[train_idx].to(device)
        self.x_eval = join_features([t.float() for t in teachers.eval], product).to(device)
        self.y_eval = eval_split.labels.to(device)
        self.n_train, self.n_eval = len(self.y_train), len(self.y_eval)
        self.decoded_size, self.class_names, self.skipped_rows = task.decoded_size, task.class_names, task.skipped
        self.model = method_cls(teachers.dims, task.num_classes, product=product).to(device)
        self.forward = world.data_parallel(self.model, device)
        self.share = world.shard(batch_rows(cfg.batch_size, self.n_train))
        self.batching = batching(cfg, self.n_train, task.step_multiplier, augments=False)  # as a student's
        self.steps = self.batching.steps
        self.optimizer = make_optimizer([{"params": list(self.model.parameters())}], cfg.optimizer, cfg.lr, cfg.wd,
                                        device)
        self.scheduler = self.batching.schedule(self.optimizer)
        self.zero = torch.zeros((), device=device)  # R: nothing is regularised

    def start(self, prepared):
        """Nothing is prepared for a linear probe."""

    def widths(self, batches):
        return [None] * len(batches)

    def step(self, idx, width=None):
        rows = idx[self.share]
        loss = F.cross_entropy(self.forward(self.x_train[rows]), self.y_train[rows])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        loss = loss.detach()
        return loss, loss, self.zero

    @torch.no_grad()
    def evaluate(self):
        rows = torch.arange(self.n_eval, device=self.device)[self.world.shard(self.n_eval)]
        correct = sum((self.model(self.x_eval[b]).argmax(-1) == self.y_eval[b]).sum()
                      for b in rows.split(self.cfg.eval_batch_size))
        return int(self.world.sum(torch.as_tensor(correct, device=self.device))) / self.n_eval

    def state_dict(self):
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict())

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
