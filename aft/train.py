"""The per-step work of training a downstream model: CE + beta * R for one model, one method, one beta.

Everything a step touches (inputs, labels, teacher features) is on the device before the first
step, and a step returns its losses still on the device; aft.loop drives it.
"""
import torch
import torch.nn.functional as F

from aft.inputs import warn_upscale
from aft.loop import cosine_schedule, make_optimizer
from aft.methods import get_method
from aft.models import check_modality, create_classifier
from aft.runtime import autocast
from aft.teachers import Student


def eval_batches(model, inputs, n, batch_size, device, precision):
    """(row indices, logits, phi) of every batch of the first n rows of `inputs`, in eval mode; the
    caller holds torch.inference_mode()."""
    model.eval()
    widths = inputs.widths(list(torch.arange(n).split(batch_size)))  # host side
    for idx, width in zip(torch.arange(n, device=device).split(batch_size), widths):
        with autocast(device, precision):
            logits, phi = model(inputs.batch(idx, width))
        yield idx, logits, phi
    model.train()


class Trainer:
    """One downstream model, its method and optimizer, with every input already on the device.

    `step(idx, width)` is the whole per-step work of a run; benchmarks time exactly this.
    `teachers` is an aft.teachers.TeacherFeatures, or None for a method without teachers.
    """

    def __init__(self, cfg, task, train_idx, eval_split, teachers, device, precision):
        method_cls = get_method(cfg.method)
        model, spec = create_classifier(cfg.model_class, task.num_classes, pretrained=bool(cfg.init_model))
        check_modality(spec, task)
        self.cfg, self.device, self.precision = cfg, device, precision
        self.model = model.to(device)
        if device.type == "cuda" and spec.modality == "image":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.method = method_cls(model.head.in_features, teachers.dims if teachers else [],
                                 learn_scales=cfg.learn_scales, prior_lr=cfg.prior_lr).to(device)
        self.psi = torch.cat(teachers.train, 1).to(device) if teachers else None

        # Preprocess once; only the rows trained on are kept.
        image_size = cfg.image_size or None
        self.train_inputs = spec.make_inputs(task.train.subset(train_idx).inputs, task, image_size).to(device)
        warn_upscale(self.train_inputs, cfg.model_class)
        self.train_labels = task.train.labels[train_idx].to(device)
        self.eval_inputs = spec.make_inputs(eval_split.inputs, task, image_size).to(device)
        self.eval_labels = eval_split.labels.to(device)
        self.n_train, self.n_eval = len(self.train_labels), len(self.eval_labels)
        self.augment = method_cls.augments and not cfg.no_augment and task.modality == "image"

        self.steps = cfg.steps * task.step_multiplier  # 4 on mnli, qqp, qnli (the paper's)
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}] + self.method.param_groups()
        self.optimizer = make_optimizer(groups, cfg, device)
        self.scheduler = cosine_schedule(self.optimizer, self.steps)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.model.train()
        self.method.start(Student(cfg.model_class, bool(cfg.init_model), self.train_features), self.train_labels,
                          teachers)

    def widths(self, batches):
        return self.train_inputs.widths(batches)

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

    @torch.inference_mode()
    def evaluate(self):
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for idx, logits, _ in eval_batches(self.model, self.eval_inputs, self.n_eval, self.cfg.eval_batch_size,
                                           self.device, self.precision):
            correct += (logits.argmax(-1) == self.eval_labels[idx]).sum()
        return correct.item() / self.n_eval

    @torch.inference_mode()
    def train_features(self):
        """phi (n_train x d, float32) of the train rows, in eval mode."""
        return torch.cat([phi.float() for _, _, phi in eval_batches(
            self.model, self.train_inputs, self.n_train, self.cfg.eval_batch_size, self.device, self.precision)])

    def state_dict(self):
        return dict(model=self.model.state_dict(), method=self.method.state_dict(),
                    optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict())

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
