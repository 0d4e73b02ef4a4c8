"""The interface every transfer method implements, and the registry that finds one by name.

A method is an nn.Module regulariser R with `forward(student_feat, teacher_feat) -> scalar`,
trained as CE + beta * R. Every method takes the same constructor arguments,
`(student_dim, teacher_dims, learn_scales=True, prior_lr=1e-2)`: `teacher_dims` lists the width of
each pre-trained model's features (their concatenation is `teacher_feat`, or, where the method's
`tensor_product` fact says so, their tensor product, an aft.product.Product); `student_dim` is the
width of phi, or the list of its factors' widths for a product student (CLIP); the last two matter
only to methods with learned teacher-side weights. What a method needs from the run beyond that (the
student's starting features, the labels, the teachers' cached features) it gets in `start()`, from
the run that already has them. Its facts are class attributes, so the loop, the checks and the
results table ask the method rather than test its name.
"""
import torch.nn as nn

from aft.datasets.base import tensor_product
from aft.errors import UserError

METHODS = {}


def register_method(name):
    def wrap(cls):
        METHODS[name] = cls
        cls.name = name
        return cls
    return wrap


def product_methods(student=False):
    """The methods that run on a tensor-product dataset (with a product student, when `student`)."""
    return sorted(n for n, m in METHODS.items() if m.tensor_product and (m.product_student or not student))


def get_method(name):
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


class MethodFacts:
    """What the rest of the tool needs to know of a method, with the usual values."""
    uses_teacher = True  # False: the run needs no pre-trained features at all
    takes_beta = True  # False: --prec changes nothing, so it is no hyperparameter (results ignore it)
    baseline = False  # True: the method whose error is the unit of the results table (standard transfer)
    augments = False  # True: --no_augment=False turns on train-time augmentation (the paper's init only)
    trains_student = True  # False: no downstream model; a linear probe on the cached features (aft.probe)
    writes_files = False  # True: start() writes a file all processes read (ft's autoencoders): rank 0 goes first
    # On a dataset whose pre-trained models' features combine as a tensor product (SNLI-VE, as in the
    # paper's code): "product", the method reads their tensor product (an aft.product.Product); "split",
    # each model's features side by side, as on any other dataset; None: it has no such form and is
    # refused there, before any work.
    tensor_product = None
    product_student = False  # True: takes a downstream model whose phi is a product kept factored (CLIP)

    @classmethod
    def reads_product(cls, modality):
        """Whether the method reads the tensor product of the pre-trained models' features on a dataset
        of this modality (else their features side by side)."""
        return tensor_product(modality) and cls.tensor_product == "product"

    @classmethod
    def check_tensor_product(cls, dataset, teachers, student_factors):
        """Before any work on a tensor-product `dataset`: refuse, in one line, what this method cannot
        compute there. `teachers`: the pre-trained models' modalities in order; `student_factors`: the
        modalities of a product student's factors in order (CLIP: ["image", "text"]), or None."""
        if cls.tensor_product is None:
            raise UserError(f"--method={cls.name} has no form for {dataset}, whose pre-trained features combine as a "
                            f"tensor product (as in the paper's code); use one of: {', '.join(product_methods())}")
        if student_factors and not cls.product_student:
            raise UserError(f"--method={cls.name} cannot take a downstream model whose features are the "
                            f"{' x '.join(student_factors)} outer product (a 1,048,576-wide phi); use one of: "
                            f"{', '.join(product_methods(student=True))}")


class Regularizer(MethodFacts, nn.Module):

    def __init__(self, student_dim, teacher_dims, learn_scales=True, prior_lr=1e-2):
        super().__init__()
        self.prior_lr = prior_lr

    def start(self, student, labels, teachers):
        """Called once before the first step, after the module is on the run's device (that of
        `labels`). `student` is an aft.teachers.Student (its name, whether pre-trained, and its
        features at the start, computed only when asked), `labels` the labels of the train rows,
        `teachers` an aft.teachers.TeacherFeatures (the cached features of those rows)."""

    def param_groups(self):
        """Optimizer groups for this module's own parameters: by default the model's lr and no weight
        decay, as in the paper's code (--wd regularises the downstream model, not kd's map or ft's
        translator)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": 0.0}] if params else []

    def prior_groups(self, *params):
        """The group of learned teacher-side weights (AFT's scales and their ablations' maps): their own
        lr `prior_lr` and no weight decay (a decay would pull the scales towards 1/2); none when fixed."""
        params = [p for p in params if p.requires_grad]
        return [{"params": params, "lr": self.prior_lr, "weight_decay": 0.0}] if params else []
