"""`rkd`: relational knowledge distillation (Park et al., CVPR 2019).

The student copies the teachers' geometry of the batch rather than their features:
R = (L_dist + 2 L_angle) / 2 (the paper's weights 25 and 50, up to a common factor), where L_dist is
smooth-L1 between the pairwise distance matrices, each divided by its mean positive entry, and
L_angle is smooth-L1 between the cosines of the angles of all B^3 triplets (i, j, k), the angle at
x_j between x_i - x_j and x_k - x_j; a triplet with i = j or k = j (or a zero distance) has cosine 0,
as in the reference code. The teachers' side carries no gradient.

Both only need squared distances: the cosine comes from the law of cosines,
cos = (d_ji^2 + d_jk^2 - d_ik^2) / (2 d_ji d_jk), so no B x B x D difference tensor is built and the
cost is B^2 D + B^3. They are computed in float64 from centred rows: the Gram-matrix route to a
distance subtracts large numbers, and TF32 matmuls (on by default on CUDA here) would lose it.
"""
import torch
import torch.nn.functional as F

from aft.methods.base import Regularizer, register_method
from aft.product import Product


def squared_distances(x):
    if isinstance(x, Product):  # from the factors' Gram matrices (aft.product), already float64
        g = x.gram()
    else:
        x = x.double()
        x = x - x.mean(0, keepdim=True)  # distances are translation invariant; centring keeps digits
        g = x @ x.T
    sq = g.diagonal()
    return (sq[:, None] + sq[None, :] - 2 * g).clamp(min=0)


def relations(x):
    """The normalised distance matrix (B, B) and the triplet cosines (B, B, B), indexed [j, i, k]."""
    d2 = squared_distances(x)
    b = d2.shape[0]
    # Pairs that span a direction: not the diagonal and not duplicates (up to rounding).
    pair = ~torch.eye(b, dtype=torch.bool, device=d2.device) & (d2 > 1e-12 * d2.max())
    d = torch.where(pair, d2, 1.0).sqrt()  # 1.0 keeps the masked entries' gradient finite
    dist = torch.where(pair, d, 0.0)
    dist = dist / (dist.sum() / pair.sum().clamp(min=1)).clamp(min=1e-12)  # mean positive entry
    num = d2[:, :, None] + d2[:, None, :] - d2[None, :, :]  # d_ji^2 + d_jk^2 - d_ik^2
    cos = torch.where(pair[:, :, None] & pair[:, None, :], num / (2 * d[:, :, None] * d[:, None, :]), 0.0)
    return dist, cos


@register_method("rkd")
class RelationalDistillation(Regularizer):
    tensor_product = "product"  # the batch's geometry in the joint representation, as AFT's kernels
    paper_tensor_product = "split"  # the paper's code ignores the tensor product here: the teachers side by side
    product_student = True

    def forward(self, student_feat, teacher_feat):
        with torch.no_grad():
            t_dist, t_cos = relations(teacher_feat)
        s_dist, s_cos = relations(student_feat)
        return ((F.smooth_l1_loss(s_dist, t_dist) + 2 * F.smooth_l1_loss(s_cos, t_cos)) / 2).float()
