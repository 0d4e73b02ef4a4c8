"""`aft_rbf`: the AFT ablation with an RBF kernel K_ij = exp(-||a_i - a_j||^2) on the centred,
L2-normalised rows a (of phi, and of psi * sigmoid(s)); scales, their learning rate and R as `aft`."""
import torch

from aft.methods.base import register_method
from aft.methods.aft import AdaptiveFeatureTransfer, kernel_distance, normalized_kernel


def rbf_kernel(x):
    k = normalized_kernel(x)  # a_i . a_j
    sq = k.diagonal()  # ||a_i||^2: 1, or 0 for a row equal to the batch mean
    return torch.exp(-(sq[:, None] + sq[None, :] - 2 * k).clamp(min=0))


@register_method("aft_rbf")
class RBFFeatureTransfer(AdaptiveFeatureTransfer):
    def forward(self, student_feat, teacher_feat):
        scaled = teacher_feat * torch.sigmoid(self.scales)
        return kernel_distance(rbf_kernel(student_feat), rbf_kernel(scaled))
