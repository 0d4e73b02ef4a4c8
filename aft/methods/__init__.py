"""Transfer methods by name; each is one small module registered in aft.methods.base, whose
docstring states the interface. A new method is one new file imported here."""
from aft.methods.base import (METHODS, MethodFacts, NoSettings, Regularizer, default_of, get_method, hyperparameter,
                              hyperparameters, register_method)
from aft.methods import stl, aft, kd, rkd, aft_rbf, aft_dense, aft_no_kernel, ft, btune, linear_probe  # noqa: F401

__all__ = ["METHODS", "MethodFacts", "NoSettings", "Regularizer", "default_of", "get_method", "hyperparameter",
           "hyperparameters", "register_method"]
