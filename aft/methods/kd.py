"""`kd`: feature distillation. A learned linear map V, b sends the student's features to the
teachers'; R = mean((phi V + b - psi)^2). The teachers have no task head, so this is KD on features.

A product student (CLIP on SNLI-VE, whose phi is image (x) text) is distilled as in the paper's code:
each of its factors by its own map to the pre-trained model of the same place (CLIP's image embedding
to the first model's features, its text embedding to the second's), R the mean of the per-model
mean squared errors; a map from the 1,048,576-wide product itself would not fit a GPU.
"""
import torch
import torch.nn as nn

from aft.errors import UserError
from aft.methods.base import Regularizer, register_method
from aft.product import Product


@register_method("kd")
class FeatureDistillation(Regularizer):
    tensor_product = "split"
    product_student = True

    def __init__(self, student_dim, teacher_dims, settings=None):
        super().__init__(student_dim, teacher_dims, settings)
        if isinstance(student_dim, int):
            self.proj = nn.Linear(student_dim, sum(teacher_dims))
        else:
            if len(student_dim) != len(teacher_dims):
                raise ValueError(f"a product student of {len(student_dim)} factors needs as many pre-trained "
                                 f"models, not {len(teacher_dims)}")
            self.proj = nn.ModuleList(nn.Linear(d, t) for d, t in zip(student_dim, teacher_dims))
        self.teacher_dims = list(teacher_dims)

    @classmethod
    def check_tensor_product(cls, dataset, teachers, student_factors):
        super().check_tensor_product(dataset, teachers, student_factors)
        if student_factors and list(teachers) != list(student_factors):
            raise UserError(f"--method=kd maps each factor of the downstream model's {' x '.join(student_factors)} "
                            f"features to the pre-trained model of the same place, so --pretrained_models must be "
                            f"{' then '.join(f'a {m} model' for m in student_factors)}; these are "
                            f"{', '.join(teachers)}")

    def forward(self, student_feat, teacher_feat):
        if not isinstance(student_feat, Product):
            return (self.proj(student_feat) - teacher_feat).pow(2).mean()
        targets = teacher_feat.split(self.teacher_dims, 1)
        return torch.stack([(p(f) - t).pow(2).mean() for p, f, t in
                            zip(self.proj, student_feat.factors, targets)]).mean()
