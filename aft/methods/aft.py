"""`aft`: Adaptive Feature Transfer (Qiu et al., ICML 2024).

The student's batch kernel K = phi_n phi_n^T is pulled towards the kernel of the scaled teacher
features K' = psi'_n psi'_n^T, psi' = psi * sigmoid(s), with rows centred over the batch and
L2-normalised; R = sqrt(mean((K - K')^2) + 1e-8). Comparing kernels instead of features lets the
student ignore directions of psi it has no use for, and the learned scales s downweight teacher
features that do not help the task.

On a dataset whose models' features combine as a tensor product (SNLI-VE), psi' is the tensor product
of the per-model scaled features, and a product student's phi (CLIP's) likewise, as in the paper's
code; their kernels come from the factors' Gram matrices (aft.product), never from the written-out rows.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from aft.methods.base import Regularizer, hyperparameter, register_method
from aft.product import Product


def prior_lr_field():
    """The learning rate of learned teacher-side weights (AFT's scales, its ablations' maps)."""
    return hyperparameter(1e-2, "learning rate of AFT's scales", bound="> 0", paper=True)


@dataclass(frozen=True)
class PriorSettings:
    """AFT's hyperparameters, shared by the ablations that learn teacher-side weights."""
    learn_scales: bool = hyperparameter(True, "AFT learns its per-feature scales (False: fixed at 1/2)", paper=True,
                                        paper_default=False)
    prior_lr: float = prior_lr_field()


def normalized_kernel(x):
    """The batch kernel of the rows of x centred over the batch, then L2-normalised: x a tensor, or an
    aft.product.Product, for which the same kernel is computed from its Gram matrix G: centring the
    rows is H G H (H = I - 11^T/B), and normalising divides by the roots of its diagonal."""
    if isinstance(x, Product):
        return centred_normalized_gram(x.gram()).to(x.factors[0].dtype)
    x = x - x.mean(0, keepdim=True)
    x = F.normalize(x, dim=1, eps=1e-8)
    return x @ x.T


def centred_normalized_gram(g, eps=1e-8):
    g = g - g.mean(0, keepdim=True) - g.mean(1, keepdim=True) + g.mean()
    norms = g.diagonal().clamp(min=0).sqrt().clamp(min=eps)  # as F.normalize: x / max(||x||, eps)
    return g / (norms[:, None] * norms[None, :])


def kernel_distance(k_student, k_teacher):
    return torch.sqrt((k_student - k_teacher).pow(2).mean() + 1e-8)


@register_method("aft")
class AdaptiveFeatureTransfer(Regularizer):
    Settings = PriorSettings
    tensor_product = "product"
    product_student = True

    def __init__(self, student_dim, teacher_dims, settings=None):
        super().__init__(student_dim, teacher_dims, settings)
        # s = 0: every teacher feature starts at weight sigmoid(0) = 1/2
        self.scales = nn.Parameter(torch.zeros(sum(teacher_dims)), requires_grad=self.settings.learn_scales)

    def param_groups(self):
        return self.prior_groups(self.scales)

    def forward(self, student_feat, teacher_feat):
        scaled = teacher_feat * torch.sigmoid(self.scales)
        return kernel_distance(normalized_kernel(student_feat), normalized_kernel(scaled))
