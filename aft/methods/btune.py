"""`btune`: B-Tuning (You et al., 2021, arXiv 2110.10545), as in the AFT paper's code.

LogME (logme.py) fits a Bayesian linear model from each pre-trained model's train features to the
labels: its evidence per sample is the score l_i, its posterior mean the weights M_i (C x D_i). The
downstream model's own pre-trained features ({model_class}_{dataset}.pt) give M_s (C x d). The
student's features, read through M_s, are pulled towards the teachers' LogME predictions weighted
by pi = softmax(l / 0.1): R = mean((phi M_s^T - sum_i pi_i psi_i M_i^T)^2). Everything but phi is
fixed, so the teachers' side is one (C x D) matrix, sum_i pi_i M_i laid side by side.

M_s reads the features the downstream model starts from. A pre-trained student (--init_model)
starts from its pre-trained features, cached like any other model's. A student trained from random
weights (the offline demo's tiny_bert) has no such file: its starting features are those of its
random initialisation, which depend on the seed, so the run computes them itself before the first
step and fits LogME on them.
"""
import os

import torch

from aft.datasets import subset_suffix
from aft.errors import UserError
from aft.features import DEFAULT_FEATURES_DIR, feature_path, save_features_command
from aft.logme import logme
from aft.methods.base import Regularizer, register_method

TEMPERATURE = 0.1


def logme_keys(train_frac, use_val):
    """The keys logme.py writes, for the rows run.py trains on: the fixed train_frac subsample when
    train_frac != 1, without the held-out validation rows when use_val (their labels stay unseen)."""
    suffix = subset_suffix(train_frac, use_val)
    return f"logme_score{suffix}", f"logme_weights{suffix}"


def logme_command(model, teachers):
    cmd = f"python logme.py --model_class={model} --dataset={teachers.dataset}"
    if teachers.train_frac != 1:
        cmd += f" --train_frac={teachers.train_frac}"
    if teachers.use_val:
        cmd += " --use_val=True"
    if teachers.features_dir != DEFAULT_FEATURES_DIR:
        cmd += f" --features_dir={teachers.features_dir}"
    return cmd


def read_logme(model, entries, width, teachers):
    """(score, weights C x D) from the LogME `entries` of `model`'s cache file (of `width`-wide features);
    a UserError naming the command to run when they are missing or stale."""
    path = feature_path(teachers.features_dir, model, teachers.dataset)
    score_key, weights_key = logme_keys(teachers.train_frac, teachers.use_val)
    if score_key not in entries or weights_key not in entries:
        raise UserError(f"{path} has no {score_key}/{weights_key} (B-Tuning needs LogME of "
                        f"{model}); run: {logme_command(model, teachers)}")
    weights = entries[weights_key].float()
    if weights.shape[1] != width:
        raise UserError(f"{path}: {weights_key} is {tuple(weights.shape)} but the features are "
                        f"{width} wide; run again: {logme_command(model, teachers)}")
    return float(entries[score_key]), weights


@register_method("btune")
class BTuning(Regularizer):
    tensor_product = "split"  # each model's LogME prediction, as in the paper's code on any dataset
    def __init__(self, student_dim, teacher_dims, learn_scales=True, prior_lr=1e-2):
        super().__init__(student_dim, teacher_dims, learn_scales, prior_lr)
        self.student_dim = student_dim
        # Filled in start(), from the LogME files: M_s (C x d) and sum_i pi_i M_i side by side (C x D).
        self.register_buffer("pi", None)
        self.register_buffer("student_weights", None)
        self.register_buffer("teacher_weights", None)

    def start(self, student, labels, teachers):
        scores, weights = zip(*(read_logme(name, entries, dim, teachers) for name, entries, dim in
                                zip(teachers.names, teachers.logme_entries, teachers.dims)))
        num_classes = weights[0].shape[0]
        if student.pretrained:
            own = self.read_own_weights(student.name, teachers)
        else:  # M_s is fitted below, from the random initialisation's features
            own = torch.zeros(num_classes, self.student_dim)
        if any(w.shape[0] != num_classes for w in weights + (own,)):
            raise UserError(f"the LogME weights disagree on the number of classes "
                            f"({own.shape[0]} for {student.name}, {[w.shape[0] for w in weights]} for "
                            f"{', '.join(teachers.names)}); run logme.py again on each file")
        pi = torch.softmax(torch.tensor(scores, dtype=torch.float64) / TEMPERATURE, 0).float()
        device = labels.device
        self.pi = pi.to(device)
        self.teacher_weights = torch.cat([p * w for p, w in zip(pi, weights)], 1).to(device)
        self.student_weights = own.to(device)
        if not student.pretrained:
            self.fit_own_weights(student, labels)

    def read_own_weights(self, model, teachers):
        own_path = feature_path(teachers.features_dir, model, teachers.dataset)
        if not os.path.exists(own_path):
            raise UserError(f"B-Tuning needs {own_path}; create it with: "
                            f"{save_features_command(model, teachers.dataset, teachers.features_dir)}, "
                            f"then run: {logme_command(model, teachers)}")
        cache = teachers.cache_of(model)
        _, own = read_logme(model, cache, cache["train"].shape[1], teachers)
        if own.shape[1] != self.student_dim:
            raise UserError(
                f"B-Tuning reads the downstream model's features through the LogME weights of its own "
                f"pre-trained features, {own_path}, which are {own.shape[1]} wide, but {model}'s "
                f"features (the input of its head) are {self.student_dim} wide; that file must hold the features "
                f"of --model_class={model} itself: {save_features_command(model, teachers.dataset, teachers.features_dir)}")
        return own

    def fit_own_weights(self, student, labels):
        features = student.features()
        score, weights = logme(features, labels, num_classes=self.student_weights.shape[0])
        self.student_weights.copy_(weights.float())
        # Random features barely vary between examples, so their readout needs large weights, and
        # then small moves of phi change R a lot: worth saying, as it decides which betas make sense.
        scale = float(weights.norm(dim=1).max() / self.teacher_weights.norm(dim=1).max().clamp(min=1e-12))
        print(f"btune: {student.name} starts from random weights, so M_s is LogME of its features at "
              f"initialisation ({len(labels)} train rows, score {score:.4f}); its rows are {scale:.3g}x "
              f"the pre-trained side's, so R reacts {scale:.3g}x as strongly to phi: try small betas", flush=True)

    def forward(self, student_feat, teacher_feat):
        target = teacher_feat @ self.teacher_weights.T  # sum_i pi_i psi_i M_i^T, fixed
        return (student_feat @ self.student_weights.T - target).pow(2).mean()
