"""`ft`: factor transfer (Kim, Park and Kwak, NeurIPS 2018), on cached feature vectors, as the AFT
paper's code does it.

A "paraphraser" autoencoder per pre-trained model compresses that model's features psi_i into a
factor E_i(psi_i) of half their width (the paper's rate k = 0.5). It is trained before the first
step, on the cached train features of the rows the run trains on, and cached beside the features
(aft.prepare, "ft_autoencoders"); start() receives the encoders. During the run they are frozen and
their factors concatenated, E(psi) (width D'); the student learns a "translator" T: d -> d -> D' -> D'
(ReLU between, the last layer's weights starting at zero), and R = mean over the batch of sum over
the D' factor dimensions of |T(phi)/||T(phi)|| - E(psi)/||E(psi)|||: the L1 distance between the
L2-normalised factors.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from aft.methods.base import Regularizer, register_method


def factor_width(dim):
    return max(1, dim // 2)


def encoder_net(dim, factor_dim):
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, factor_dim), nn.ReLU(),
                         nn.Linear(factor_dim, factor_dim), nn.ReLU())


def decoder_net(dim, factor_dim):
    return nn.Sequential(nn.Linear(factor_dim, factor_dim), nn.ReLU(), nn.Linear(factor_dim, dim), nn.ReLU(),
                         nn.Linear(dim, dim))


@register_method("ft")
class FactorTransfer(Regularizer):
    tensor_product = "split"  # each model's own autoencoder, as on any dataset
    preparation = "ft_autoencoders"

    def __init__(self, student_dim, teacher_dims, settings=None):
        super().__init__(student_dim, teacher_dims, settings)
        self.factor_dims = [factor_width(dim) for dim in teacher_dims]
        factors = sum(self.factor_dims)
        self.translator = nn.Sequential(nn.Linear(student_dim, student_dim), nn.ReLU(),
                                        nn.Linear(student_dim, factors), nn.ReLU(), nn.Linear(factors, factors))
        nn.init.zeros_(self.translator[-1].weight)
        self.encoders = nn.ModuleList(encoder_net(dim, k) for dim, k in zip(teacher_dims, self.factor_dims))
        self.encoders.requires_grad_(False)
        self.teacher_dims = list(teacher_dims)

    def start(self, prepared):
        """`prepared`: the state dict of each pre-trained model's trained encoder, in order."""
        for encoder, state in zip(self.encoders, prepared):
            encoder.load_state_dict(state)

    def forward(self, student_feat, teacher_feat):
        with torch.no_grad():
            parts = teacher_feat.split(self.teacher_dims, dim=1)
            factor = F.normalize(torch.cat([e(p) for e, p in zip(self.encoders, parts)], 1), dim=1)
        return (F.normalize(self.translator(student_feat), dim=1) - factor).abs().sum(1).mean()
