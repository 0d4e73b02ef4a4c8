"""`linear_probe`: a linear classifier trained with CE on the cached pre-trained features alone, with
no downstream model: how much the teachers' features know about the task. aft.probe.ProbeTrainer
trains it with the run's optimizer, schedule and loop."""
import torch.nn as nn

from aft.methods.base import MethodFacts, register_method


@register_method("linear_probe")
class LinearProbe(MethodFacts, nn.Module):
    takes_beta = False  # nothing is regularised
    trains_student = False

    def __init__(self, teacher_dims, num_classes):
        super().__init__()
        self.linear = nn.Linear(sum(teacher_dims), num_classes)

    def forward(self, teacher_feat):
        return self.linear(teacher_feat)
