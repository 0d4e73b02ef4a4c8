"""`linear_probe`: a linear classifier trained with CE on the cached pre-trained features alone, with
no downstream model: how much the teachers' features know about the task. It regularises nothing;
aft.train.run hands a run with this method to aft.probe.run_probe."""
from aft.methods import Regularizer, register_method


@register_method("linear_probe")
class LinearProbe(Regularizer):
    probe = True

    def forward(self, student_feat, teacher_feat):
        raise RuntimeError("linear_probe trains no downstream model; aft.train.run dispatches it to aft.probe")
