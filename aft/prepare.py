"""What a method needs computed before its first step, by name (a method's `preparation`), kept out
of the methods themselves: B-Tuning's LogME scores and weights (read from the files logme.py scored,
or fitted on the student's own starting features) and factor transfer's autoencoders (trained once
and cached beside the features). The experiment runs the step and hands its result to the method's
start()."""
import copy
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from aft.datasets import subset_suffix
from aft.errors import UserError
from aft.features import DEFAULT_FEATURES_DIR, cache_lock, feature_path, save_features_command
from aft.files import atomic_save, safe_load
from aft.logme import logme
from aft.methods.ft import decoder_net, encoder_net
from aft.registry import Registry


@dataclass(frozen=True)
class Preparation:
    # run(method, student, labels, teachers, paper_exact) -> what the method's start() takes; `method` is the
    # method (its nn.Module), `student` an aft.train.Student, `labels` the train rows' labels on the run's
    # device, `teachers` an aft.teachers.TeacherFeatures, `paper_exact` whether to prepare as the paper's code
    run: Callable
    writes_files: bool = False  # True: a file all processes read (under torchrun rank 0 goes first)
    paper_reads_all_rows: bool = False  # under --paper_exact it reads every train and test row of the caches


PREPARATIONS = Registry("preparation")


# ---- B-Tuning: LogME scores and weights -----------------------------------------------------------

def logme_keys(train_frac, use_val):
    """The keys logme.py writes, for the rows run.py trains on: the fixed train_frac subsample when
    train_frac != 1, without the held-out validation rows when use_val (their labels stay unseen)."""
    suffix = subset_suffix(train_frac, use_val)
    return f"logme_score{suffix}", f"logme_weights{suffix}"


def logme_command(model, teachers):
    cmd = f"python logme.py --model_class={model} {teachers.flags or f'--dataset={teachers.dataset}'}"
    if teachers.train_frac != 1:
        cmd += f" --train_frac={teachers.train_frac}"
    if teachers.use_val:
        cmd += " --use_val=True"
    if teachers.features_dir != DEFAULT_FEATURES_DIR:
        cmd += f" --features_dir={teachers.features_dir}"
    return cmd


def read_logme(model, entries, width, teachers):
    """(score, weights C x D) from the LogME `entries` of `model`'s cache file (of `width`-wide features);
    a UserError naming the command to run when they are missing or stale."""
    path = feature_path(teachers.features_dir, model, teachers.dataset)
    score_key, weights_key = logme_keys(teachers.train_frac, teachers.use_val)
    if score_key not in entries or weights_key not in entries:
        raise UserError(f"{path} has no {score_key}/{weights_key} (B-Tuning needs LogME of "
                        f"{model}); run: {logme_command(model, teachers)}")
    weights = entries[weights_key].float()
    if weights.shape[1] != width:
        raise UserError(f"{path}: {weights_key} is {tuple(weights.shape)} but the features are "
                        f"{width} wide; run again: {logme_command(model, teachers)}")
    return float(entries[score_key]), weights


def read_own_logme(model, width, teachers):
    """M_s of a pre-trained student: the LogME weights of its own cached features, which must be as
    wide as its phi (`width`)."""
    own_path = feature_path(teachers.features_dir, model, teachers.dataset)
    if not os.path.exists(own_path):
        raise UserError(f"B-Tuning needs {own_path}; create it with: "
                        f"{save_features_command(model, teachers.dataset, teachers.features_dir, flags=teachers.flags)}, "
                        f"then run: {logme_command(model, teachers)}")
    cache = teachers.cache_of(model)
    _, own = read_logme(model, cache, cache["train"].shape[1], teachers)
    if own.shape[1] != width:
        raise UserError(
            f"B-Tuning reads the downstream model's features through the LogME weights of its own "
            f"pre-trained features, {own_path}, which are {own.shape[1]} wide, but {model}'s "
            f"features (the input of its head) are {width} wide; that file must hold the features "
            f"of --model_class={model} itself: "
            f"{save_features_command(model, teachers.dataset, teachers.features_dir, flags=teachers.flags)}")
    return own


def logme_weights(method, student, labels, teachers, paper_exact=False):
    """The teachers' LogME scores and weights from their files, and M_s: from the student's own file
    when it starts pre-trained; else LogME of its features at initialisation (they depend on the
    seed, so they are fitted here, never cached)."""
    scores, weights = zip(*(read_logme(name, entries, dim, teachers) for name, entries, dim in
                            zip(teachers.names, teachers.logme_entries, teachers.dims)))
    num_classes = weights[0].shape[0]
    own = read_own_logme(student.name, method.student_dim, teachers) if student.pretrained else None
    if any(w.shape[0] != num_classes for w in weights + ((own,) if own is not None else ())):
        raise UserError(f"the LogME weights disagree on the number of classes "
                        f"({own.shape[0] if own is not None else num_classes} for {student.name}, "
                        f"{[w.shape[0] for w in weights]} for {', '.join(teachers.names)}); run logme.py again on "
                        f"each file")
    if own is None:
        score, own = logme(student.features(), labels, num_classes=num_classes)
        # Random features barely vary between examples, so their readout needs large weights, and
        # then small moves of phi change R a lot: worth saying, as it decides which betas make sense.
        _, mix = method.teacher_mix(scores, weights)
        scale = float(own.norm(dim=1).max() / mix.norm(dim=1).max().clamp(min=1e-12))
        print(f"btune: {student.name} starts from random weights, so M_s is LogME of its features at "
              f"initialisation ({len(labels)} train rows, score {score:.4f}); its rows are {scale:.3g}x "
              f"the pre-trained side's, so R reacts {scale:.3g}x as strongly to phi: try small betas", flush=True)
    return dict(scores=list(scores), teacher_weights=list(weights), student_weights=own.float().to(labels.device))


PREPARATIONS.register("logme_weights", Preparation(logme_weights))


# ---- factor transfer: the autoencoders ------------------------------------------------------------

AE_SEED = 0  # the autoencoder is shared by every run (seed) that trains on the same rows
AE_BATCH, AE_LR, AE_HOLDOUT = 1024, 3e-4, 0.1
# Early stopping: at most AE_MAX_ROUNDS rounds; stop after AE_PATIENCE rounds without a relative gain
# of AE_MIN_GAIN in the held-out MSE.
AE_MAX_ROUNDS, AE_MIN_ROUND_STEPS, AE_PATIENCE, AE_MIN_GAIN = 500, 50, 10, 1e-2
AE_CACHE_VERSION = 2  # 2: one autoencoder per pre-trained model


def fresh_autoencoder(dim, factor_dim):
    """The encoder and decoder, initialised from AE_SEED (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(AE_SEED)
        return encoder_net(dim, factor_dim), decoder_net(dim, factor_dim)


def fit_autoencoder(dim, factor_dim, device, rounds, held_mse, min_gain):
    """A fresh encoder and decoder (fresh_autoencoder) fitted to reconstruct rows (MSE, Adam at AE_LR):
    each round trains on the batches `rounds()` gives, then `held_mse(encoder, decoder)` scores the rows
    held for early stopping; the best encoder so far is kept, and AE_PATIENCE rounds without an MSE
    below best * (1 - min_gain) stop it (at most AE_MAX_ROUNDS). Returns the best encoder (CPU) and
    its held MSE."""
    encoder, decoder = fresh_autoencoder(dim, factor_dim)
    encoder, decoder = encoder.to(device), decoder.to(device)
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=AE_LR)
    best, best_state, patience = float("inf"), None, AE_PATIENCE
    for _ in range(AE_MAX_ROUNDS):
        for batch in rounds():
            loss = F.mse_loss(decoder(encoder(batch)), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            held = held_mse(encoder, decoder)
        patience = AE_PATIENCE if held < best * (1 - min_gain) else patience - 1
        if held < best:
            best, best_state = held, copy.deepcopy(encoder.state_dict())
        if patience == 0:
            break
    encoder.load_state_dict(best_state)
    return encoder.cpu(), best


def train_autoencoder(x, factor_dim, device):
    """Encoder and decoder fitted to reconstruct the rows of x, early stopping on a fixed hold-out (a gain
    of AE_MIN_GAIN at least); returns the best encoder (CPU) and its hold-out MSE. The global RNG is left
    untouched."""
    g = torch.Generator().manual_seed(AE_SEED)
    perm = torch.randperm(len(x), generator=g)
    n_hold = max(1, int(AE_HOLDOUT * len(x))) if len(x) > 1 else 0
    hold, fit = x[perm[:n_hold]].to(device), x[perm[n_hold:]].to(device)
    hold = hold if n_hold else fit
    # A round is an epoch, or enough epochs for AE_MIN_ROUND_STEPS steps when the rows are few.
    per_epoch = -(-len(fit) // AE_BATCH)

    def rounds():
        for _ in range(-(-AE_MIN_ROUND_STEPS // per_epoch)):
            for idx in torch.randperm(len(fit), generator=g).split(AE_BATCH):
                yield fit[idx.to(device)]

    def held_mse(encoder, decoder):
        total = sum(F.mse_loss(decoder(encoder(b)), b, reduction="sum") for b in hold.split(AE_BATCH))
        return total.item() / hold.numel()

    return fit_autoencoder(x.shape[1], factor_dim, device, rounds, held_mse, AE_MIN_GAIN)


def train_autoencoder_paper(x, test_x, factor_dim, device):
    """The paper's train_ae.py: every train row in order, batches of AE_BATCH, early stopping on the test
    rows' features (any lower test MSE counts); returns the best encoder (CPU) and its test MSE."""
    x, test_x = x.to(device), test_x.to(device)

    def held_mse(encoder, decoder):  # the mean over test rows of each batch's mean squared error, as train_ae.py
        return sum(F.mse_loss(decoder(encoder(b)), b).item() * len(b) for b in test_x.split(AE_BATCH)) / len(test_x)

    return fit_autoencoder(x.shape[1], factor_dim, device, lambda: x.split(AE_BATCH), held_mse, 0.0)


def autoencoder_key(x, model, teachers, factor_dim, procedure="hold-out"):
    """What identifies the rows an autoencoder was trained on: a cache is reused only for the same."""
    xd = x.double()
    fingerprint = [xd.sum().item(), xd.pow(2).sum().item(), (xd.sum(1) * torch.arange(1, len(xd) + 1)).sum().item()]
    return dict(version=AE_CACHE_VERSION, model=model, dataset=teachers.dataset, dim=x.shape[1],
                n_train=teachers.n_source, train_frac=float(teachers.train_frac), use_val=bool(teachers.use_val),
                fingerprint=fingerprint, factor_dim=factor_dim, **({"procedure": procedure} if procedure != "hold-out" else {}))


def paraphraser(model, x, factor_dim, teachers, device, test_x=None):
    """The encoder of `model`'s autoencoder (a state dict): from its cache
    {features_dir}/{model}_{dataset}.ft{suffix}.pt when that was made from these rows, else trained
    now and cached: on the train features of the rows the run trains on, early stopping on a fixed 10%
    of them (as the paper's train_ae.py, but without looking at the test split); or, given the test
    rows' features `test_x` (--paper_exact), as train_ae.py itself on every train row
    ({model}_{dataset}.ft-paper.pt)."""
    procedure = "hold-out" if test_x is None else "paper"
    key = autoencoder_key(x, model, teachers, factor_dim, procedure)
    path = teachers.derived_path(model, "ft" if test_x is None else "ft-paper")
    with cache_lock(path):  # runs that need it at once: one trains it, the others wait and read it
        if os.path.exists(path):
            cached = safe_load(path, "factor-transfer autoencoder")
            if isinstance(cached, dict) and cached.get("key") == key:
                return cached["encoder"]
            print(f"ft: {path} was made from other features or rows: training it again", flush=True)
        print(f"ft: training the autoencoder of {model} ({x.shape[1]} -> {factor_dim}) on {len(x)} train rows",
              flush=True)
        encoder, mse = train_autoencoder(x, factor_dim, device) if test_x is None else \
            train_autoencoder_paper(x, test_x, factor_dim, device)
        state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
        atomic_save(dict(key=key, encoder=state, heldout_mse=mse), path)
    print(f"ft: saved {path} (held-out reconstruction MSE {mse:.4g})", flush=True)
    return state


def ft_autoencoders(method, student, labels, teachers, paper_exact=False):
    if paper_exact:  # the paper's train_ae.py: every train row, early stopping on the test rows
        return [paraphraser(name, cache["train"].float(), k, teachers, labels.device, cache["test"].float())
                for name, cache, k in zip(teachers.names, teachers.caches, method.factor_dims)]
    return [paraphraser(name, x.float(), k, teachers, labels.device)
            for name, x, k in zip(teachers.names, teachers.train, method.factor_dims)]


PREPARATIONS.register("ft_autoencoders", Preparation(ft_autoencoders, writes_files=True, paper_reads_all_rows=True))
