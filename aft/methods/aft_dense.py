"""`aft_dense`: the AFT ablation with a dense learned map instead of diagonal scales: psi' = psi S,
S (D x D) initialised N(0, 1/D), no sigmoid; R is `aft`'s kernel distance. S is learned with
--learn_scales (the default), in the scales' parameter group (lr `prior_lr`, no weight decay), and
stays at its random start without, as in the paper's code. It has no tensor-product form (SNLI-VE):
S would be as wide as the product squared."""
import math

import torch
import torch.nn as nn

from aft.methods.base import Regularizer, register_method
from aft.methods.aft import PriorSettings, kernel_distance, normalized_kernel


@register_method("aft_dense")
class DenseFeatureTransfer(Regularizer):
    Settings = PriorSettings

    def __init__(self, student_dim, teacher_dims, settings=None):
        super().__init__(student_dim, teacher_dims, settings)
        dim = sum(teacher_dims)
        self.mix = nn.Parameter(torch.randn(dim, dim) / math.sqrt(dim), requires_grad=self.settings.learn_scales)

    def param_groups(self):
        return self.prior_groups(self.mix)

    def forward(self, student_feat, teacher_feat):
        return kernel_distance(normalized_kernel(student_feat), normalized_kernel(teacher_feat @ self.mix))
