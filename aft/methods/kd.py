"""`kd`: feature distillation. A learned linear map V, b sends the student's features to the
teachers'; R = mean((phi V + b - psi)^2). The teachers have no task head, so this is KD on features."""
import torch.nn as nn

from aft.methods.base import Regularizer, register_method


@register_method("kd")
class FeatureDistillation(Regularizer):
    def __init__(self, student_dim, teacher_dims, learn_scales=True, prior_lr=1e-2):
        super().__init__(student_dim, teacher_dims, learn_scales, prior_lr)
        self.proj = nn.Linear(student_dim, sum(teacher_dims))

    def forward(self, student_feat, teacher_feat):
        return (self.proj(student_feat) - teacher_feat).pow(2).mean()
