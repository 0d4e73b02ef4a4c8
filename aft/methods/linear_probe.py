"""`linear_probe`: a linear classifier trained with CE on the cached pre-trained features alone, with
no downstream model: how much the teachers' features know about the task. aft.probe.ProbeTrainer
trains it with the run's optimizer, schedule and loop. On a tensor-product dataset (SNLI-VE) it is
linear in the product of the two models' features, as the paper's product-linear model."""
import torch.nn as nn

from aft.errors import UserError
from aft.methods.base import MethodFacts, register_method
from aft.product import ProductLinear


@register_method("linear_probe")
class LinearProbe(MethodFacts, nn.Module):
    trains_student = False  # and nothing is regularised: no beta
    tensor_product = "product"  # the paper's product-linear probe

    @classmethod
    def check_tensor_product(cls, dataset, teachers, student_factors):
        super().check_tensor_product(dataset, teachers, student_factors)
        if len(teachers) > 2:
            raise UserError(f"--method=linear_probe on {dataset} is linear in the product of two pre-trained models' "
                            f"features; pass one or two --pretrained_models, not {len(teachers)}")

    def __init__(self, teacher_dims, num_classes, product=False):
        super().__init__()
        product = product and len(teacher_dims) > 1  # the product of one model's features is those features
        self.linear = ProductLinear(teacher_dims, num_classes) if product else nn.Linear(sum(teacher_dims), num_classes)

    def forward(self, teacher_feat):
        return self.linear(teacher_feat)
