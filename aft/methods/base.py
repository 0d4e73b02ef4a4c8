"""The interface every transfer method implements, and the registry that finds one by name.

A method is an nn.Module regulariser R with `forward(student_feat, teacher_feat) -> scalar`,
trained as CE + beta * R, built as `Method(student_dim, teacher_dims, settings)`: `teacher_dims`
lists the width of each pre-trained model's features (their concatenation is `teacher_feat`, or,
where the method's `tensor_product` fact says so, their tensor product, an aft.product.Product);
`student_dim` is the width of phi, or the list of its factors' widths for a product student (CLIP);
`settings` is an instance of the method's `Settings`, the dataclass of its own hyperparameters.

A method's module holds its maths and nothing else: no files, no printing, no training of other
networks. What it needs computed before the first step (B-Tuning's LogME weights, factor transfer's
autoencoders) it names as its `preparation` (aft.prepare runs it, and caches what can be cached) and
receives in `start(prepared)`. Its facts are class attributes, so the loop, the checks and the
results table ask the method rather than test its name.

A hyperparameter is a field of `Settings` made with `hyperparameter(default, help, bound)`: the
scripts make a flag of it, check its bound before any work, and the results table tells runs apart
by it; adding one touches only the method's module.
"""
import dataclasses

import torch.nn as nn

from aft.datasets.base import tensor_product
from aft.errors import UserError
from aft.registry import Registry

METHODS = Registry("method")


def register_method(name):
    def wrap(cls):
        METHODS.register(name, cls)
        cls.name = name
        check_shared_hyperparameters()
        return cls
    return wrap


def get_method(name):
    return METHODS.get(name)


def hyperparameter(default, help, bound=None, paper=False, refused_elsewhere=None, paper_default=None):
    """A field of a method's Settings: its default, its --help text, its bound (a key of
    aft.errors.BOUND_TESTS), whether the paper's run.py has the flag, when another value than the
    default must be refused for every other method, why (in the error line), and the paper's code's
    default where it differs (--paper_exact takes it)."""
    return dataclasses.field(default=default, metadata=dict(help=help, bound=bound, paper=paper,
                                                            refused_elsewhere=refused_elsewhere,
                                                            paper_default=paper_default))


def default_of(field, paper_exact=False):
    """A hyperparameter's default: the paper's code's under --paper_exact, where it differs."""
    paper = field.metadata.get("paper_default")
    return paper if paper_exact and paper is not None else field.default


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """A method without hyperparameters of its own."""


def hyperparameters():
    """Every method's hyperparameters, one dataclasses.Field per name, in a stable order. Methods that
    share a name (AFT and its ablations: learn_scales, prior_lr) share one flag."""
    found = {}
    for name in METHODS.names():
        for f in dataclasses.fields(METHODS[name].Settings):
            found.setdefault(f.name, f)
    return list(found.values())


def check_shared_hyperparameters():
    """Two methods that name the same hyperparameter must mean the same flag by it."""
    seen = {}
    for name in METHODS.names():
        for f in dataclasses.fields(METHODS[name].Settings):
            other = seen.setdefault(f.name, (name, f))
            if (other[1].default, other[1].metadata) != (f.default, f.metadata):
                raise ValueError(f"methods {other[0]} and {name} declare hyperparameter {f.name} differently")


def product_methods(student=False):
    """The methods that run on a tensor-product dataset (with a product student, when `student`)."""
    return sorted(n for n, m in METHODS.items() if m.tensor_product and (m.product_student or not student))


class MethodFacts:
    """What the rest of the tool needs to know of a method, with the usual values."""
    Settings = NoSettings  # the method's own hyperparameters (a frozen dataclass of hyperparameter() fields)
    uses_teacher = True  # False: the run needs no pre-trained features at all (no R, no beta)
    trains_student = True  # False: no downstream model; a linear probe on the cached features (aft.probe)
    baseline = False  # True: the method whose error is the unit of the results table (standard transfer)
    preparation = None  # the name of the step aft.prepare runs before the first step (its result: start())
    # On a dataset whose pre-trained models' features combine as a tensor product (SNLI-VE, as in the
    # paper's code): "product", the method reads their tensor product (an aft.product.Product); "split",
    # each model's features side by side, as on any other dataset; None: it has no such form and is
    # refused there, before any work.
    tensor_product = None
    product_student = False  # True: takes a downstream model whose phi is a product kept factored (CLIP)

    @classmethod
    def takes_beta(cls):
        """Whether --prec changes anything: only a regulariser of a downstream model towards teachers."""
        return cls.uses_teacher and cls.trains_student

    @classmethod
    def augments(cls, settings):
        """Whether the run trains on augmented batches (the paper's init with --no_augment=False only)."""
        return False

    # Under --paper_exact, the tensor-product form of the paper's code where it differs (its RKD uses
    # the teachers side by side); None: the same.
    paper_tensor_product = None

    @classmethod
    def reads_product(cls, modality, paper_exact=False):
        """Whether the method reads the tensor product of the pre-trained models' features on a dataset
        of this modality (else their features side by side)."""
        form = cls.paper_tensor_product if paper_exact and cls.paper_tensor_product else cls.tensor_product
        return tensor_product(modality) and form == "product"

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

    def __init__(self, student_dim, teacher_dims, settings=None):
        super().__init__()
        self.settings = settings if settings is not None else self.Settings()

    def start(self, prepared):
        """Called once before the first step, after the module is on the run's device, with what the
        method's `preparation` made (None for a method without one)."""

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
        return [{"params": params, "lr": self.settings.prior_lr, "weight_decay": 0.0}] if params else []
