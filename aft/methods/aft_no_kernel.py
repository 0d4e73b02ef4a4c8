"""`aft_no_kernel`: the AFT ablation that compares features instead of kernels:
R = mean((phi_c - (psi W)_c)^2), W: D -> d learned (lr `prior_lr`, no weight decay, like AFT's
scales, as in the paper's code), _c centred over the batch. Unlike `kd` the map goes from the
teachers to the student: phi is pulled towards a learned linear function of psi. It has no
tensor-product form (SNLI-VE): the paper's code refuses it there."""
from dataclasses import dataclass

import torch.nn as nn

from aft.methods.aft import prior_lr_field
from aft.methods.base import Regularizer, register_method


@dataclass(frozen=True)
class NoKernelSettings:
    """W is always learned (there is no --learn_scales here), at AFT's prior_lr."""
    prior_lr: float = prior_lr_field()


def centred(x):
    return x - x.mean(0, keepdim=True)


@register_method("aft_no_kernel")
class NoKernelFeatureTransfer(Regularizer):
    Settings = NoKernelSettings

    def __init__(self, student_dim, teacher_dims, settings=None):
        super().__init__(student_dim, teacher_dims, settings)
        self.proj = nn.Linear(sum(teacher_dims), student_dim, bias=False)  # a bias cancels in the centring

    def param_groups(self):
        return self.prior_groups(self.proj.weight)

    def forward(self, student_feat, teacher_feat):
        return (centred(student_feat) - centred(self.proj(teacher_feat))).pow(2).mean()
