"""Features that are the tensor product of several models' features, kept as their factors.

On SNLI-VE the paper's code combines the pre-trained models' features as a tensor product (an image
model's features of the picture (x) a text model's of the hypothesis), and its CLIP student's feature
is the outer product of CLIP's image and text embeddings: 1024 x 1024 = 1,048,576 numbers a row.
Written out, a batch of such rows, a linear head on them, or a map to them would not fit a GPU. They
are never written out here: every quantity the methods need comes from the factors. The inner product
of two product rows is the product of their factors' inner products, so the batch's Gram matrix is the
elementwise product of the factors' Gram matrices (B x B each), and a linear function of a product row
is a multilinear form of its factors.
"""
import math

import torch
import torch.nn as nn


class Product:
    """A batch (or a split) of rows a_1 (x) a_2 (x) ... (x) a_k, held as the factors (N x d_i each).
    Flattened, a row is `torch.einsum('bi,bj->bij', a_1, a_2).reshape(N, -1)` (for k = 2), d_1 ... d_k wide."""

    def __init__(self, factors):
        self.factors = tuple(factors)

    @property
    def dims(self):
        return [f.shape[1] for f in self.factors]

    @property
    def width(self):
        return math.prod(self.dims)

    def __len__(self):
        return len(self.factors[0])

    def __getitem__(self, rows):
        return Product(f[rows] for f in self.factors)

    def to(self, *args, **kwargs):
        return Product(f.to(*args, **kwargs) for f in self.factors)

    def __mul__(self, scales):
        """Each factor scaled by its own part of `scales` (sum(dims) long), as the paper scales each
        model's features before taking their product."""
        return Product(f * s for f, s in zip(self.factors, scales.split(self.dims)))

    def gram(self):
        """The Gram matrix of the product rows (N x N, float64): the elementwise product of the
        factors' Gram matrices, in float64 since centring it later subtracts large, close numbers."""
        g = None
        for f in self.factors:
            f = f.double()
            g = f @ f.T if g is None else g * (f @ f.T)
        return g

    def flatten(self):
        """The product rows written out (tests and tiny widths only: d_1 ... d_k columns)."""
        out = self.factors[0]
        for f in self.factors[1:]:
            out = torch.einsum("bi,bj->bij", out, f).reshape(len(out), -1)
        return out


def each_factor(fn, x):
    """fn(x) for a tensor; for a Product, the Product of fn of each factor."""
    return Product(fn(f) for f in x.factors) if isinstance(x, Product) else fn(x)


def join_features(parts, product):
    """The pre-trained models' features of some rows, each model's (N x D_i) in `parts`, as one input:
    their tensor product when `product` (of one model: its features), else side by side (N x sum D_i)."""
    parts = list(parts)
    return Product(parts) if product and len(parts) > 1 else torch.cat(parts, 1)


class ProductLinear(nn.Module):
    """A linear layer on the flattened product of two factors, computed from the factors:
    logits_c = a^T W_c b + bias_c, W (C x d_1 x d_2). Initialised as nn.Linear(d_1 d_2, C) is (the
    paper's CLIP head and its product-linear probe are such layers), from the same random draws."""

    def __init__(self, dims, out_features):
        super().__init__()
        if len(dims) != 2:
            raise ValueError(f"ProductLinear takes two factors, not {len(dims)}")
        flat = nn.Linear(math.prod(dims), out_features)
        self.dims, self.in_features, self.out_features = list(dims), flat.in_features, out_features
        self.weight = nn.Parameter(flat.weight.detach().reshape(out_features, *dims))
        self.bias = nn.Parameter(flat.bias.detach())

    def forward(self, x):
        a, b = x.factors
        return torch.einsum("bi,cij,bj->bc", a, self.weight.to(a.dtype), b) + self.bias.to(a.dtype)
