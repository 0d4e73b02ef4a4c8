"""Transfer methods by name. Each is one small module: an nn.Module regulariser R with
`forward(student_feat, teacher_feat) -> scalar`, trained as CE + beta * R (SPEC 3).

Every method takes the same constructor arguments, `(student_dim, teacher_dims, cfg)`:
`teacher_dims` lists the width of each pre-trained model's features (their concatenation is
`teacher_feat`), `cfg` is the run's configuration. A new method is one new file that registers
itself here.
"""
import torch.nn as nn

from aft.errors import UserError

METHODS = {}


def register_method(name):
    def wrap(cls):
        METHODS[name] = cls
        cls.name = name
        return cls
    return wrap


class Regularizer(nn.Module):
    uses_teacher = True  # False: the run needs no pre-trained features at all
    probe = False  # True: no downstream model is trained; aft.train.run hands the run to aft.probe

    def __init__(self, student_dim, teacher_dims, cfg):
        super().__init__()

    def start(self, student_features, labels):
        """Called once before the first step. `student_features()` returns the downstream model's
        features of the train rows as it starts (computed only when called), `labels` their labels."""

    def param_groups(self, cfg):
        """Optimizer groups for this module's own parameters; by default the model's lr and wd."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params}] if params else []


def get_method(name):
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


# Importing the modules registers them.
from aft.methods import stl, aft, kd, rkd, aft_rbf, aft_dense, aft_no_kernel, ft, btune, linear_probe  # noqa: E402,F401
