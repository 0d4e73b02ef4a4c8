"""The per-step work of training a downstream model: CE + beta * R for one model, one method, one beta.

Everything a step touches (inputs, labels, teacher features) is on the device before the first
step, and a step returns its losses still on the device; aft.loop drives it.

Under torchrun each process holds the whole run's data and computes its contiguous share of every
global batch: the model is wrapped in DistributedDataParallel (its gradients averaged over the
processes), and phi of every share is gathered, with gradients, so that R is the regulariser of the
global batch, which AFT's and RKD's kernels need (they couple the rows of a batch). Each process then
computes the same R; the gathered rows send each process the sum of the processes' (equal) gradients
of its own rows, which DDP's average turns back into R's gradient, and the method's own weights
(AFT's scales, kd's map) get the average of equal gradients. So N processes compute what one does.
"""
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from aft.errors import UserError
from aft.inputs import pictures_of, warn_upscale
from aft.models import build_classifier
from aft.optim import batch_rows, batching, make_optimizer
from aft.product import each_factor, join_features
from aft.runtime import autocast, rank_seed, seed_everything


@dataclass
class Student:
    """The downstream model as a method's preparation sees it before the first step (aft.prepare)."""
    name: str
    pretrained: bool
    features: Callable[[], torch.Tensor]  # its features of the train rows now (computed when called)


def eval_batches(model, inputs, rows, batch_size, device, precision):
    """(row indices, logits, phi) of every batch of `rows` (a host tensor of rows of `inputs`), in eval
    mode; the caller holds torch.inference_mode()."""
    model.eval()
    batches = list(rows.split(batch_size))
    widths = inputs.widths(batches)  # host side
    inputs.expect(batches)
    for idx, width in zip(rows.to(device).split(batch_size), widths):
        with autocast(device, precision):
            logits, phi = model(inputs.batch(idx, width))
        yield idx, logits, phi
    model.train()


class Trainer:
    """One downstream model, its method and optimizer, with every input already on the device.

    `step(idx, width)` is the whole per-step work of a run; benchmarks time exactly this.
    `plan` is the run's aft.plan.RunPlan; `teachers` an aft.teachers.TeacherFeatures, or None for a
    method without teachers. start(prepared) hands the method what its preparation made.
    """

    def __init__(self, plan, task, train_idx, eval_split, teachers):
        cfg, method_cls = plan.cfg, plan.method
        self.cfg, self.device, self.precision, self.world = cfg, plan.device, plan.precision, plan.world
        device, world = self.device, self.world
        # The paper's code builds a Hugging Face student from its pre-trained weights, --init_model or not.
        pretrained = bool(cfg.init_model) or (cfg.paper_exact and plan.student.family == "hf")
        model = build_classifier(plan.student, task.num_classes, pretrained=pretrained)
        if world.size > 1 and device.type == "cuda":  # BatchNorm over the global batch (CUDA only in PyTorch)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(device)
        if device.type == "cuda" and plan.student.modality == "image":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.method = method_cls(model.phi_dims, teachers.dims if teachers else [], plan.settings).to(device)
        product = method_cls.reads_product(task.modality, cfg.paper_exact)
        self.psi = join_features(teachers.train, product).to(device) if teachers else None

        # Preprocess once; only the rows trained on are kept.
        image_size = cfg.image_size or None
        train_split = task.train.subset(train_idx)
        self.train_inputs = plan.student.make_inputs(train_split.inputs, task, image_size).to(device)
        warn_upscale(self.train_inputs, cfg.model_class)
        self.train_labels = task.train.labels[train_idx].to(device)
        self.eval_inputs = plan.student.make_inputs(eval_split.inputs, task, image_size).to(device)
        self.eval_labels = eval_split.labels.to(device)
        self.n_train, self.n_eval = len(self.train_labels), len(self.eval_labels)
        self.decoded_size, self.class_names, self.skipped_rows = task.decoded_size, task.class_names, task.skipped
        self.augment = method_cls.augments(plan.settings) and task.modality == "image"
        if self.augment and cfg.paper_exact:  # timm's own transform on each original picture, as the paper's code
            if train_split.originals is None:
                raise UserError(f"dataset {task.name} keeps no original pictures to augment as the paper's code does; "
                                f"drop --paper_exact or --no_augment=False")
            pictures_of(self.train_inputs).augment_as_paper(train_split.originals)
        self.share = world.shard(batch_rows(cfg.batch_size, self.n_train))  # this process's rows of every global batch
        self.gathers = method_cls.takes_beta()  # only a regulariser reads the global batch's phi

        self.batching = batching(cfg, self.n_train, task.step_multiplier, method_cls.augments(plan.settings))
        self.steps = self.batching.steps
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}] + self.method.param_groups()
        self.optimizer = make_optimizer(groups, cfg.optimizer, cfg.lr, cfg.wd, device)
        self.scheduler = self.batching.schedule(self.optimizer)
        self.method_params = [p for p in self.method.parameters() if p.requires_grad]
        forward = world.data_parallel(self.model, device)
        self.forward = torch.compile(forward) if cfg.compile else forward
        self.model.train()
        self.student = Student(cfg.model_class, pretrained, self.train_features)

    def start(self, prepared):
        """Hand the method what its preparation made, before the first step."""
        self.method.start(prepared)
        if self.world.size > 1:  # the model starts alike everywhere; dropout and augmentation draw apart
            seed_everything(rank_seed(self.cfg.seed, self.world.rank))

    def widths(self, batches):
        """The text width of each global batch (host side, once per epoch); pictures read from disk
        start coming for this process's share of each."""
        self.train_inputs.expect([b[self.share] for b in batches])
        return self.train_inputs.widths(batches)

    def step(self, idx, width=None):
        """One optimisation step on the global batch of train rows `idx` (a device tensor); returns
        (loss, ce, reg) of this process's share, still on the device."""
        rows = idx[self.share]
        with autocast(self.device, self.precision):
            logits, phi = self.forward(self.train_inputs.batch(rows, width, self.augment))
        ce = F.cross_entropy(logits.float(), self.train_labels[rows])
        if self.gathers:
            phi = each_factor(lambda f: self.world.gather_rows(f.float()), phi)  # the global batch's phi
        reg = self.method(phi, self.psi[idx] if self.psi is not None else None)
        loss = ce + self.cfg.prec * reg
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.world.average_gradients(self.method_params)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), ce.detach(), reg.detach()

    @torch.inference_mode()
    def evaluate(self):
        """Accuracy on the evaluation rows, each process counting its share."""
        rows = torch.arange(self.n_eval)[self.world.shard(self.n_eval)]
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for idx, logits, _ in eval_batches(self.model, self.eval_inputs, rows, self.cfg.eval_batch_size,
                                           self.device, self.precision):
            correct += (logits.argmax(-1) == self.eval_labels[idx]).sum()
        return int(self.world.sum(correct)) / self.n_eval

    @torch.inference_mode()
    def train_features(self):
        """phi (n_train x d, float32) of the train rows, in eval mode."""
        return torch.cat([phi.float() for _, _, phi in eval_batches(
            self.model, self.train_inputs, torch.arange(self.n_train), self.cfg.eval_batch_size, self.device,
            self.precision)])

    def state_dict(self):
        return dict(model=self.model.state_dict(), method=self.method.state_dict(),
                    optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict())

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
