"""`btune`: B-Tuning (You et al., 2021, arXiv 2110.10545), as in the AFT paper's code.

LogME fits a Bayesian linear model from each pre-trained model's train features to the labels: its
evidence per sample is the score l_i, its posterior mean the weights M_i (C x D_i). The downstream
model's own starting features give M_s (C x d). The student's features, read through M_s, are pulled
towards the teachers' LogME predictions weighted by pi = softmax(l / 0.1):
R = mean((phi M_s^T - sum_i pi_i psi_i M_i^T)^2). Everything but phi is fixed, so the teachers' side
is one (C x D) matrix, sum_i pi_i M_i laid side by side.

The scores and weights are prepared before the first step (aft.prepare, "logme_weights": from the
files logme.py scored, or, for a student trained from random weights, LogME of its features at
initialisation) and given to start().
"""
import torch

from aft.methods.base import Regularizer, register_method

TEMPERATURE = 0.1


@register_method("btune")
class BTuning(Regularizer):
    tensor_product = "split"  # each model's LogME prediction, as in the paper's code on any dataset
    preparation = "logme_weights"

    def __init__(self, student_dim, teacher_dims, settings=None):
        super().__init__(student_dim, teacher_dims, settings)
        self.student_dim = student_dim
        # Filled in start(): pi, M_s (C x d) and sum_i pi_i M_i side by side (C x D).
        self.register_buffer("pi", None)
        self.register_buffer("student_weights", None)
        self.register_buffer("teacher_weights", None)

    @staticmethod
    def teacher_mix(scores, weights):
        """pi = softmax(l / T) and sum_i pi_i M_i laid side by side (C x D)."""
        pi = torch.softmax(torch.tensor(scores, dtype=torch.float64) / TEMPERATURE, 0).float()
        return pi, torch.cat([p * w for p, w in zip(pi, weights)], 1)

    def start(self, prepared):
        """`prepared`: the teachers' LogME `scores` and `teacher_weights` (each C x D_i), and M_s as
        `student_weights` (C x d), on the run's device."""
        device = prepared["student_weights"].device
        pi, mix = self.teacher_mix(prepared["scores"], prepared["teacher_weights"])
        self.pi, self.teacher_weights = pi.to(device), mix.to(device)
        self.student_weights = prepared["student_weights"].float()

    def forward(self, student_feat, teacher_feat):
        target = teacher_feat @ self.teacher_weights.T  # sum_i pi_i psi_i M_i^T, fixed
        return (student_feat @ self.student_weights.T - target).pow(2).mean()
