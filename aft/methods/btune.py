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

from aft.errors import UserError
from aft.features import feature_path, read_features, save_features_command
from aft.logme import logme
from aft.methods import Regularizer, register_method

TEMPERATURE = 0.1


def logme_keys(train_frac, use_val):
    """The keys logme.py writes, for the rows run.py trains on: the fixed train_frac subsample when
    train_frac != 1, without the held-out validation rows when use_val (their labels stay unseen)."""
    suffix = ("" if train_frac == 1 else f"_train_frac={train_frac}") + ("_val" if use_val else "")
    return f"logme_score{suffix}", f"logme_weights{suffix}"


def logme_command(model, cfg):
    cmd = f"python logme.py --model_class={model} --dataset={cfg.dataset}"
    if cfg.train_frac != 1:
        cmd += f" --train_frac={cfg.train_frac}"
    if cfg.use_val:
        cmd += " --use_val=True"
    if cfg.features_dir != "./features":
        cmd += f" --features_dir={cfg.features_dir}"
    return cmd


def read_logme(model, cfg):
    """(score, weights C x D) of `model`'s cached features of cfg.dataset; a UserError naming the
    command to run when the file or its LogME keys are missing."""
    path = feature_path(cfg.features_dir, model, cfg.dataset)
    if not os.path.exists(path):
        raise UserError(f"B-Tuning needs {path}; create it with: "
                        f"{save_features_command(model, cfg.dataset, cfg.features_dir)}, "
                        f"then run: {logme_command(model, cfg)}")
    cache = read_features(path, model, cfg.dataset, features_dir=cfg.features_dir)
    score_key, weights_key = logme_keys(cfg.train_frac, cfg.use_val)
    if score_key not in cache or weights_key not in cache:
        raise UserError(f"{path} has no {score_key}/{weights_key} (B-Tuning needs LogME of "
                        f"{model}); run: {logme_command(model, cfg)}")
    weights = cache[weights_key].float()
    if weights.shape[1] != cache["train"].shape[1]:
        raise UserError(f"{path}: {weights_key} is {tuple(weights.shape)} but the features are "
                        f"{cache['train'].shape[1]} wide; run again: {logme_command(model, cfg)}")
    return float(cache[score_key]), weights


@register_method("btune")
class BTuning(Regularizer):
    def __init__(self, student_dim, teacher_dims, cfg):
        super().__init__(student_dim, teacher_dims, cfg)
        names = [m for m in cfg.pretrained_models.split(",") if m]
        if len(names) != len(teacher_dims):
            raise UserError(f"--pretrained_models={cfg.pretrained_models} names {len(names)} models "
                            f"but {len(teacher_dims)} feature blocks were given")
        scores, weights = zip(*(read_logme(m, cfg) for m in names))
        for name, w, dim in zip(names, weights, teacher_dims):
            if w.shape[1] != dim:
                raise UserError(f"LogME weights of {name} are {w.shape[1]} wide but its features are {dim} "
                                f"wide; run again: {logme_command(name, cfg)}")
        num_classes = weights[0].shape[0]
        self.from_start = not cfg.init_model
        if self.from_start:  # M_s is fitted in start(), from the random initialisation's features
            own = torch.zeros(num_classes, student_dim)
        else:
            own = self.read_own_weights(student_dim, cfg)
        if any(w.shape[0] != num_classes for w in weights + (own,)):
            raise UserError(f"the LogME weights disagree on the number of classes "
                            f"({own.shape[0]} for {cfg.model_class}, {[w.shape[0] for w in weights]} for "
                            f"{', '.join(names)}); run logme.py again on each file")
        pi = torch.softmax(torch.tensor(scores, dtype=torch.float64) / TEMPERATURE, 0)
        self.register_buffer("pi", pi.float())
        self.register_buffer("student_weights", own)  # M_s (C x d)
        self.register_buffer("teacher_weights", torch.cat([p * w for p, w in zip(pi.float(), weights)], 1))  # (C x D)
        self.model_class = cfg.model_class

    @staticmethod
    def read_own_weights(student_dim, cfg):
        _, own = read_logme(cfg.model_class, cfg)
        own_path = feature_path(cfg.features_dir, cfg.model_class, cfg.dataset)
        if own.shape[1] != student_dim:
            raise UserError(
                f"B-Tuning reads the downstream model's features through the LogME weights of its own "
                f"pre-trained features, {own_path}, which are {own.shape[1]} wide, but {cfg.model_class}'s "
                f"features (the input of its head) are {student_dim} wide; that file must hold the features "
                f"of --model_class={cfg.model_class} itself: {save_features_command(cfg.model_class, cfg.dataset, cfg.features_dir)}")
        return own

    def start(self, student_features, labels):
        if not self.from_start:
            return
        features = student_features()
        score, weights = logme(features, labels, num_classes=self.student_weights.shape[0])
        self.student_weights.copy_(weights.float())
        # Random features barely vary between examples, so their readout needs large weights, and
        # then small moves of phi change R a lot: worth saying, as it decides which betas make sense.
        scale = float(weights.norm(dim=1).max() / self.teacher_weights.cpu().norm(dim=1).max().clamp(min=1e-12))
        print(f"btune: {self.model_class} starts from random weights, so M_s is LogME of its features at "
              f"initialisation ({len(labels)} train rows, score {score:.4f}); its rows are {scale:.3g}x "
              f"the pre-trained side's, so R reacts {scale:.3g}x as strongly to phi: try small betas", flush=True)

    def forward(self, student_feat, teacher_feat):
        target = teacher_feat @ self.teacher_weights.T  # sum_i pi_i psi_i M_i^T, fixed
        return (student_feat @ self.student_weights.T - target).pow(2).mean()
