"""`init`: standard transfer learning. No regulariser; the model starts from --init_model's weights."""
from dataclasses import dataclass

import torch

from aft.methods.base import Regularizer, hyperparameter, register_method


@dataclass(frozen=True)
class StandardSettings:
    no_augment: bool = hyperparameter(
        True, "no data augmentation (augmentation is only ever used with method=init)", paper=True,
        refused_elsewhere="augmentation is only for --method=init (the paper's code asserts it); drop --no_augment "
                          "or use --method=init")


@register_method("init")
class StandardTransfer(Regularizer):
    Settings = StandardSettings
    uses_teacher = False  # R = 0
    baseline = True
    tensor_product = "split"  # no teachers: nothing to combine
    product_student = True

    @classmethod
    def augments(cls, settings):
        return not settings.no_augment  # the paper augments only standard transfer learning

    def forward(self, student_feat, teacher_feat=None):
        return torch.zeros((), device=student_feat.device)
