"""`aft`: Adaptive Feature Transfer (Qiu et al., ICML 2024).

The student's batch kernel K = phi_n phi_n^T is pulled towards the kernel of the scaled teacher
features K' = psi'_n psi'_n^T, psi' = psi * sigmoid(s), with rows centred over the batch and
L2-normalised; R = sqrt(mean((K - K')^2) + 1e-8). Comparing kernels instead of features lets the
student ignore directions of psi it has no use for, and the learned scales s downweight teacher
features that do not help the task.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from aft.methods.base import Regularizer, register_method


def normalized_kernel(x):
    x = x - x.mean(0, keepdim=True)
    x = F.normalize(x, dim=1, eps=1e-8)
    return x @ x.T


def kernel_distance(k_student, k_teacher):
    return torch.sqrt((k_student - k_teacher).pow(2).mean() + 1e-8)


@register_method("aft")
class AdaptiveFeatureTransfer(Regularizer):
    def __init__(self, student_dim, teacher_dims, learn_scales=True, prior_lr=1e-2):
        super().__init__(student_dim, teacher_dims, learn_scales, prior_lr)
        # s = 0: every teacher feature starts at weight sigmoid(0) = 1/2
        self.scales = nn.Parameter(torch.zeros(sum(teacher_dims)), requires_grad=learn_scales)

    def param_groups(self):
        return self.prior_groups(self.scales)

    def forward(self, student_feat, teacher_feat):
        scaled = teacher_feat * torch.sigmoid(self.scales)
        return kernel_distance(normalized_kernel(student_feat), normalized_kernel(scaled))
