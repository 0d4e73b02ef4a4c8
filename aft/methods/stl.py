"""`init`: standard transfer learning. No regulariser; the model starts from --init_model's weights."""
import torch

from aft.methods.base import Regularizer, register_method


@register_method("init")
class StandardTransfer(Regularizer):
    uses_teacher = False
    takes_beta = False  # R = 0
    baseline = True
    augments = True  # the paper augments only standard transfer learning
    tensor_product = "split"  # no teachers: nothing to combine
    product_student = True

    def forward(self, student_feat, teacher_feat=None):
        return torch.zeros((), device=student_feat.device)
