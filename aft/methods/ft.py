"""`ft`: factor transfer (Kim, Park and Kwak, NeurIPS 2018), on cached feature vectors, as the AFT
paper's code does it.

A "paraphraser" autoencoder per pre-trained model compresses that model's features psi_i into a
factor E_i(psi_i) of half their width; it is trained once, offline, on the cached train features of
the rows the run trains on (reconstruction MSE, early stopping on a fixed 10% of them, as the
paper's train_ae.py but without looking at the test split), and cached beside the features as
{features_dir}/{model}_{dataset}.ft.pt (a suffix names a train_frac or use_val subset). A cache is
reused when its key (model, dataset, rows, sizes, a checksum of the features) matches, else trained
again. During the run the encoders are frozen and their factors concatenated, E(psi) (width D');
the student learns a "translator" T: d -> d -> D' -> D' (ReLU between, the last layer's weights
starting at zero), and R = mean over the batch of sum over the D' factor dimensions of
|T(phi)/||T(phi)|| - E(psi)/||E(psi)|||: the L1 distance between the L2-normalised factors.
"""
import copy
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from aft.files import atomic_save, safe_load
from aft.methods.base import Regularizer, register_method

AE_SEED = 0  # the autoencoder is shared by every run (seed) that trains on the same rows
AE_BATCH, AE_LR, AE_HOLDOUT = 1024, 3e-4, 0.1
# Early stopping: at most AE_MAX_ROUNDS rounds; stop after AE_PATIENCE rounds without a relative gain
# of AE_MIN_GAIN in the held-out MSE.
AE_MAX_ROUNDS, AE_MIN_ROUND_STEPS, AE_PATIENCE, AE_MIN_GAIN = 500, 50, 10, 1e-2
CACHE_VERSION = 2  # 2: one autoencoder per pre-trained model


def encoder_net(dim, factor_dim):
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, factor_dim), nn.ReLU(),
                         nn.Linear(factor_dim, factor_dim), nn.ReLU())


def decoder_net(dim, factor_dim):
    return nn.Sequential(nn.Linear(factor_dim, factor_dim), nn.ReLU(), nn.Linear(factor_dim, dim), nn.ReLU(),
                         nn.Linear(dim, dim))


def train_autoencoder(x, factor_dim, device):
    """Encoder and decoder fitted to reconstruct the rows of x (MSE), Adam, early stopping on a fixed
    hold-out; returns the best encoder (CPU) and its hold-out MSE. The global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(AE_SEED)
        encoder, decoder = encoder_net(x.shape[1], factor_dim), decoder_net(x.shape[1], factor_dim)
    g = torch.Generator().manual_seed(AE_SEED)
    perm = torch.randperm(len(x), generator=g)
    n_hold = max(1, int(AE_HOLDOUT * len(x))) if len(x) > 1 else 0
    hold, fit = x[perm[:n_hold]].to(device), x[perm[n_hold:]].to(device)
    hold = hold if n_hold else fit
    encoder, decoder = encoder.to(device), decoder.to(device)
    params = list(encoder.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.Adam(params, lr=AE_LR)
    best, best_state, patience = float("inf"), None, AE_PATIENCE
    # A round is an epoch, or enough epochs for AE_MIN_ROUND_STEPS steps when the rows are few.
    per_epoch = -(-len(fit) // AE_BATCH)
    for _ in range(AE_MAX_ROUNDS):
        for _ in range(-(-AE_MIN_ROUND_STEPS // per_epoch)):
            for idx in torch.randperm(len(fit), generator=g).split(AE_BATCH):
                batch = fit[idx.to(device)]
                loss = F.mse_loss(decoder(encoder(batch)), batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            held = sum(F.mse_loss(decoder(encoder(b)), b, reduction="sum") for b in hold.split(AE_BATCH)).item()
        held /= hold.numel()
        patience = AE_PATIENCE if held < best * (1 - AE_MIN_GAIN) else patience - 1
        if held < best:
            best, best_state = held, copy.deepcopy(encoder.state_dict())
        if patience == 0:
            break
    encoder.load_state_dict(best_state)
    return encoder.cpu(), best


def autoencoder_key(x, model, teachers, factor_dim):
    """What identifies the rows an autoencoder was trained on: a cache is reused only for the same."""
    xd = x.double()
    fingerprint = [xd.sum().item(), xd.pow(2).sum().item(), (xd.sum(1) * torch.arange(1, len(xd) + 1)).sum().item()]
    return dict(version=CACHE_VERSION, model=model, dataset=teachers.dataset, dim=x.shape[1],
                n_train=teachers.n_source, train_frac=float(teachers.train_frac), use_val=bool(teachers.use_val),
                fingerprint=fingerprint, factor_dim=factor_dim)


@register_method("ft")
class FactorTransfer(Regularizer):
    tensor_product = "split"  # each model's own autoencoder, as on any dataset
    writes_files = True  # the autoencoders, trained once and cached beside the features

    def __init__(self, student_dim, teacher_dims, learn_scales=True, prior_lr=1e-2):
        super().__init__(student_dim, teacher_dims, learn_scales, prior_lr)
        self.factor_dims = [max(1, dim // 2) for dim in teacher_dims]  # the paper's paraphraser rate k = 0.5
        factors = sum(self.factor_dims)
        self.translator = nn.Sequential(nn.Linear(student_dim, student_dim), nn.ReLU(),
                                        nn.Linear(student_dim, factors), nn.ReLU(), nn.Linear(factors, factors))
        nn.init.zeros_(self.translator[-1].weight)
        self.encoders = nn.ModuleList(encoder_net(dim, k) for dim, k in zip(teacher_dims, self.factor_dims))
        self.encoders.requires_grad_(False)
        self.teacher_dims = list(teacher_dims)

    def start(self, student, labels, teachers):
        for encoder, name, x, k in zip(self.encoders, teachers.names, teachers.train, self.factor_dims):
            encoder.load_state_dict(self.paraphraser(name, x.float(), k, teachers, labels.device))

    @staticmethod
    def paraphraser(model, x, factor_dim, teachers, device):
        """The encoder of `model`'s autoencoder: from its cache when that was made from these rows."""
        key = autoencoder_key(x, model, teachers, factor_dim)
        path = teachers.derived_path(model, "ft")
        if os.path.exists(path):
            cached = safe_load(path, "factor-transfer autoencoder")
            if isinstance(cached, dict) and cached.get("key") == key:
                return cached["encoder"]
            print(f"ft: {path} was made from other features or rows: training it again", flush=True)
        print(f"ft: training the autoencoder of {model} ({x.shape[1]} -> {factor_dim}) on {len(x)} train rows",
              flush=True)
        encoder, mse = train_autoencoder(x, factor_dim, device)
        state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
        atomic_save(dict(key=key, encoder=state, heldout_mse=mse), path)
        print(f"ft: saved {path} (held-out reconstruction MSE {mse:.4g})", flush=True)
        return state

    def forward(self, student_feat, teacher_feat):
        with torch.no_grad():
            parts = teacher_feat.split(self.teacher_dims, dim=1)
            factor = F.normalize(torch.cat([e(p) for e, p in zip(self.encoders, parts)], 1), dim=1)
        return (F.normalize(self.translator(student_feat), dim=1) - factor).abs().sum(1).mean()
