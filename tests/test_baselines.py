"""The baselines (rkd, the AFT ablations, ft, btune, linear_probe) and logme.py: each
regulariser against an independent float64 numpy computation of its formula, where gradients flow,
the files btune and ft read and write, and the scripts end to end."""
import json
import os
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aft.errors import UserError
from aft.features import feature_path, make_meta, write_features
from aft.files import atomic_save
from aft.methods import get_method
from tests.test_cli import cli, result_file

NUM_CLASSES = 3


def write_cache(features_dir, model, dataset, train, test, **extra):
    """A feature cache as save_features.py writes it, plus extra keys (LogME's)."""
    cache = {"train": train, "test": test, "meta": make_meta(model, dataset, train, test)}
    cache.update(extra)
    atomic_save(cache, feature_path(str(features_dir), model, dataset))


def prepare_feature_files(features_dir, cfg, student_dim, teacher_dims, n_train=40, seed=0):
    """Random feature files, with LogME keys, of one teacher per entry of teacher_dims (t0, t1, ...)
    and of the downstream model itself; points cfg at them. Enough for every method to be built."""
    g = torch.Generator().manual_seed(seed)
    names = [f"t{i}" for i in range(len(teacher_dims))]
    cfg.features_dir, cfg.dataset, cfg.model_class, cfg.pretrained_models = str(features_dir), "d", "s", ",".join(names)
    cfg.init_model = "s"  # a pre-trained student: btune reads its own features' LogME from its file
    for name, dim in zip(names + ["s"], list(teacher_dims) + [student_dim]):
        write_cache(features_dir, name, "d", torch.randn(n_train, dim, generator=g), torch.randn(5, dim, generator=g),
                    logme_score=float(torch.randn((), generator=g)),
                    logme_weights=torch.randn(NUM_CLASSES, dim, generator=g))
    return names


def started(name, student_dim, teacher_dims, cfg):
    """Method `name` as a run builds it: constructed, then started on the train rows of cfg's feature
    files (labels and the student's own features are never read by the methods built this way)."""
    from aft.datasets import train_eval_indices
    from aft.plan import method_settings
    from aft.prepare import PREPARATIONS
    from aft.teachers import TeacherFeatures
    from aft.train import Student
    cls = get_method(name)
    reg = cls(student_dim, teacher_dims, method_settings(cfg, cls))
    caches = [torch.load(feature_path(cfg.features_dir, m, cfg.dataset), weights_only=True) for m in cfg.teacher_names]
    rows, _ = train_eval_indices(len(caches[0]["train"]), cfg.train_frac, cfg.use_val)
    teachers = TeacherFeatures(cfg.teacher_names, caches, rows, cfg.dataset, cfg.features_dir, cfg.train_frac,
                               cfg.use_val)
    student = Student(cfg.model_class, bool(cfg.init_model), lambda: pytest.fail("the student's features were read"))
    labels = torch.zeros(len(rows), dtype=torch.long)
    reg.start(PREPARATIONS.get(cls.preparation).run(reg, student, labels, teachers, cfg.paper_exact)
              if cls.preparation else None)
    return reg


# ---- rkd ------------------------------------------------------------------------------------

def smooth_l1(a, b):
    z = np.abs(a - b)
    return np.where(z < 1, 0.5 * z ** 2, z - 0.5).mean()


def rkd_relations(x):
    """Distances over their mean positive entry; cosine of the angle at x_j of every triplet, by loops."""
    b = len(x)
    d = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(b)] for i in range(b)])
    d = d / d[d > 0].mean()
    cos = np.zeros((b, b, b))
    for i in range(b):
        for j in range(b):
            for k in range(b):
                u, v = x[i] - x[j], x[k] - x[j]
                if np.linalg.norm(u) > 0 and np.linalg.norm(v) > 0:
                    cos[i, j, k] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    return d, cos


def rkd_reference(phi, psi):
    (ds, cs), (dt, ct) = rkd_relations(phi), rkd_relations(psi)
    return (smooth_l1(ds, dt) + 2 * smooth_l1(cs, ct)) / 2


def test_rkd_matches_reference(cfg):
    rng = np.random.default_rng(0)
    phi, psi = rng.normal(size=(9, 5)) * 3 + 10, rng.normal(size=(9, 7))  # offset: checks the centring
    reg = get_method("rkd")(5, [3, 4])
    got = reg(torch.tensor(phi, dtype=torch.float32), torch.tensor(psi, dtype=torch.float32)).item()
    assert got == pytest.approx(rkd_reference(phi, psi), rel=1e-5)
    # the teachers' relations copied exactly: no loss (a scaled, rotated, shifted copy has the same ones)
    q = np.linalg.qr(rng.normal(size=(7, 7)))[0]
    assert reg(torch.tensor(psi), torch.tensor(2.5 * psi @ q + 1)).item() == pytest.approx(0, abs=1e-12)


def test_rkd_duplicate_rows_and_gradients(cfg):
    rng = np.random.default_rng(1)
    phi, psi = rng.normal(size=(8, 4)), rng.normal(size=(8, 6))
    phi[5], psi[5] = phi[2], psi[2]  # duplicates: a zero distance, cosine 0 as in the reference code
    reg = get_method("rkd")(4, [6])
    phi_t = torch.tensor(phi, dtype=torch.float32, requires_grad=True)
    psi_t = torch.tensor(psi, dtype=torch.float32, requires_grad=True)
    r = reg(phi_t, psi_t)
    assert r.item() == pytest.approx(rkd_reference(phi, psi), rel=1e-5)
    r.backward()
    assert torch.isfinite(phi_t.grad).all() and phi_t.grad.abs().sum() > 0
    assert psi_t.grad is None  # the teachers' side carries no gradient
    assert reg.param_groups() == []


# ---- the AFT ablations ------------------------------------------------------------------------

def unit_rows(a):
    a = a - a.mean(0)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-8)


def linear_kernel(a):
    a = unit_rows(a)
    return np.array([[a[i] @ a[j] for j in range(len(a))] for i in range(len(a))])


def rbf_kernel(a):
    a = unit_rows(a)
    return np.array([[np.exp(-np.sum((a[i] - a[j]) ** 2)) for j in range(len(a))] for i in range(len(a))])


def kernel_distance(k1, k2):
    return np.sqrt(((k1 - k2) ** 2).mean() + 1e-8)


def test_aft_rbf_matches_reference(cfg):
    rng = np.random.default_rng(2)
    phi, psi, s = rng.normal(size=(12, 5)), rng.normal(size=(12, 8)), rng.normal(size=8)
    reg = get_method("aft_rbf")(5, [8])
    with torch.no_grad():
        reg.scales.copy_(torch.from_numpy(s))
    got = reg(torch.tensor(phi, dtype=torch.float32), torch.tensor(psi, dtype=torch.float32)).item()
    ref = kernel_distance(rbf_kernel(phi), rbf_kernel(psi / (1 + np.exp(-s))))
    assert got == pytest.approx(ref, rel=1e-5)
    phi_t = torch.tensor(phi, dtype=torch.float32, requires_grad=True)
    reg(phi_t, torch.tensor(psi, dtype=torch.float32)).backward()
    assert phi_t.grad.abs().sum() > 0 and reg.scales.grad.abs().sum() > 0
    group, = reg.param_groups()
    assert group["lr"] == 1e-2 and group["weight_decay"] == 0  # 1e-2: --prior_lr's default


def test_aft_dense_matches_reference(cfg):
    torch.manual_seed(0)
    reg = get_method("aft_dense")(5, [30, 34])
    s = reg.mix.detach().double().numpy()
    assert s.shape == (64, 64) and abs(s.mean()) < 0.01 and s.var() == pytest.approx(1 / 64, rel=0.1)  # N(0, 1/D)
    rng = np.random.default_rng(3)
    phi, psi = rng.normal(size=(10, 5)), rng.normal(size=(10, 64))
    got = reg(torch.tensor(phi, dtype=torch.float32), torch.tensor(psi, dtype=torch.float32)).item()
    assert got == pytest.approx(kernel_distance(linear_kernel(phi), linear_kernel(psi @ s)), rel=1e-5)
    phi_t = torch.tensor(phi, dtype=torch.float32, requires_grad=True)
    reg(phi_t, torch.tensor(psi, dtype=torch.float32)).backward()
    assert phi_t.grad.abs().sum() > 0 and reg.mix.grad.abs().sum() > 0
    group, = reg.param_groups()
    assert group["params"] == [reg.mix] and group["lr"] == 1e-2 and group["weight_decay"] == 0  # 1e-2: --prior_lr's default


def test_aft_no_kernel_matches_reference(cfg):
    torch.manual_seed(0)
    reg = get_method("aft_no_kernel")(5, [3, 4])
    w = reg.proj.weight.detach().double().numpy()  # (d, D)
    rng = np.random.default_rng(4)
    phi, psi = rng.normal(size=(10, 5)) + 3, rng.normal(size=(10, 7)) - 2
    target = psi @ w.T
    ref = (((phi - phi.mean(0)) - (target - target.mean(0))) ** 2).mean()
    got = reg(torch.tensor(phi, dtype=torch.float32), torch.tensor(psi, dtype=torch.float32)).item()
    assert got == pytest.approx(ref, rel=1e-5)
    phi_t = torch.tensor(phi, dtype=torch.float32, requires_grad=True)
    reg(phi_t, torch.tensor(psi, dtype=torch.float32)).backward()
    assert phi_t.grad.abs().sum() > 0 and reg.proj.weight.grad.abs().sum() > 0
    group, = reg.param_groups()
    assert group["lr"] == 1e-2 and group["weight_decay"] == 0  # 1e-2: --prior_lr's default


# ---- btune ------------------------------------------------------------------------------------

def test_btune_matches_reference(cfg, tmp_path):
    prepare_feature_files(tmp_path, cfg, 6, [4, 5])
    reg = started("btune", 6, [4, 5], cfg)
    files = {m: torch.load(feature_path(str(tmp_path), m, "d"), weights_only=True) for m in ["t0", "t1", "s"]}
    scores = np.array([files[m]["logme_score"] for m in ["t0", "t1"]])
    pi = np.exp(scores / 0.1 - (scores / 0.1).max())
    pi /= pi.sum()
    rng = np.random.default_rng(5)
    phi, psi = rng.normal(size=(7, 6)), rng.normal(size=(7, 9))
    m = {k: v["logme_weights"].double().numpy() for k, v in files.items()}
    target = pi[0] * psi[:, :4] @ m["t0"].T + pi[1] * psi[:, 4:] @ m["t1"].T
    ref = ((phi @ m["s"].T - target) ** 2).mean()
    phi_t = torch.tensor(phi, dtype=torch.float32, requires_grad=True)
    r = reg(phi_t, torch.tensor(psi, dtype=torch.float32))
    assert r.item() == pytest.approx(ref, rel=1e-5)
    r.backward()
    assert phi_t.grad.abs().sum() > 0 and reg.param_groups() == []  # nothing of its own is learned


def test_btune_reads_train_frac_keys(cfg, tmp_path):
    prepare_feature_files(tmp_path, cfg, 6, [4])
    cfg.train_frac = 0.5
    with pytest.raises(UserError, match=r"no logme_score_train_frac=0\.5/logme_weights_train_frac=0\.5 .*"
                                        r"run: python logme\.py --model_class=t0 --dataset=d --train_frac=0\.5 "
                                        r"--features_dir=" + re.escape(str(tmp_path))):
        started("btune", 6, [4], cfg)
    for m, dim in [("t0", 4), ("s", 6)]:
        path = feature_path(str(tmp_path), m, "d")
        cache = torch.load(path, weights_only=True)
        cache.update({"logme_score_train_frac=0.5": 1.0, "logme_weights_train_frac=0.5": torch.ones(NUM_CLASSES, dim)})
        atomic_save(cache, path)
    reg = started("btune", 6, [4], cfg)
    assert torch.equal(reg.student_weights, torch.ones(NUM_CLASSES, 6))
    cfg.use_val = True  # tuning on the validation rows: LogME must not have seen their labels
    with pytest.raises(UserError, match=r"no logme_score_train_frac=0\.5_val/logme_weights_train_frac=0\.5_val .*"
                                        r"--train_frac=0\.5 --use_val=True --features_dir="):
        started("btune", 6, [4], cfg)


def test_btune_missing_files_and_keys_name_the_command(cfg, tmp_path):
    # A missing teacher file is the run's to report (aft.teachers, tests/test_reliability.py); btune
    # reads the LogME keys of the teachers' files and the downstream model's own file.
    prepare_feature_files(tmp_path, cfg, 6, [4, 5])
    d = str(tmp_path)
    path = feature_path(d, "t0", "d")
    cache = torch.load(path, weights_only=True)
    del cache["logme_weights"]
    atomic_save(cache, path)
    with pytest.raises(UserError, match=rf"{re.escape(d)}/t0_d\.pt has no logme_score/logme_weights .*"
                                        rf"run: python logme\.py --model_class=t0 --dataset=d --features_dir={re.escape(d)}$"):
        started("btune", 6, [4, 5], cfg)
    prepare_feature_files(tmp_path, cfg, 6, [4, 5])
    os.remove(feature_path(d, "s", "d"))  # the downstream model's own features
    with pytest.raises(UserError, match=rf"create it with: python save_features\.py --model_class=s --dataset=d "
                                        rf"--save_path={re.escape(d)}/s_d\.pt, then run: python logme\.py --model_class=s"):
        started("btune", 6, [4, 5], cfg)


def test_btune_own_features_must_match_the_student(cfg, tmp_path):
    prepare_feature_files(tmp_path, cfg, 6, [4])
    with pytest.raises(UserError, match=r"s_d\.pt, which are 6 wide, but s's features \(the input of its head\) "
                                        r"are 8 wide"):
        started("btune", 8, [4], cfg)


def test_btune_from_random_weights_fits_its_own_readout_at_the_start(cfg, tmp_path):
    """A student without pre-trained weights: M_s is LogME of its features as initialised, computed by
    the trainer before the first step (no file of the student is read)."""
    from aft.datasets import load_task, train_eval_indices
    from aft.experiment import start
    from aft.logme import logme
    from aft.plan import make_plan
    from aft.runtime import seed_everything
    from aft.teachers import TeacherFeatures
    from aft.train import Trainer
    task = load_task("digits")
    teacher = torch.randn(len(task.train), 4)
    write_cache(tmp_path, "t0", "digits", teacher, torch.randn(len(task.test), 4),
                logme_score=0.0, logme_weights=torch.randn(10, 4))
    cfg.features_dir, cfg.dataset, cfg.pretrained_models, cfg.method = str(tmp_path), "digits", "t0", "btune"
    cfg.model_class, cfg.init_model, cfg.image_size = "resnet10t", "", 16
    train_idx, _ = train_eval_indices(len(task.train), 0.5, False)
    seed_everything(0)
    cache = torch.load(feature_path(str(tmp_path), "t0", "digits"), weights_only=True)
    teachers = TeacherFeatures(["t0"], [cache], train_idx, "digits", str(tmp_path), cfg.train_frac, cfg.use_val)
    plan = make_plan(replace(cfg, device="cpu", precision="fp32"))
    trainer = Trainer(plan, task, train_idx, task.test, teachers)
    start(trainer, plan, teachers)
    assert trainer.model.training  # back in train mode for the first step
    model = trainer.model.eval()
    with torch.no_grad():  # the student's features of the train rows, all in one batch
        phi = model.body(trainer.train_inputs.batch(torch.arange(len(train_idx)), None))
    _, expected = logme(phi, task.train.labels[train_idx], num_classes=10)
    assert trainer.method.student_weights.shape == (10, 512) and expected.abs().sum() > 0
    assert torch.allclose(trainer.method.student_weights, expected.float(), rtol=1e-4, atol=1e-6)


# ---- ft ---------------------------------------------------------------------------------------

def mlp(layers, x, relu_last):
    """The Linear/ReLU stack of an nn.Sequential, in numpy."""
    linears = [m for m in layers if isinstance(m, torch.nn.Linear)]
    for i, lin in enumerate(linears):
        x = x @ lin.weight.detach().double().numpy().T + lin.bias.detach().double().numpy()
        if i < len(linears) - 1 or relu_last:
            x = np.maximum(x, 0)
    return x


@pytest.mark.slow
def test_ft_matches_reference_and_caches_its_autoencoder(cfg, tmp_path, monkeypatch, capsys):
    """The paper's factor transfer: one autoencoder per pre-trained model, factors concatenated, a
    translator d -> d -> D' -> D' whose last layer starts at zero, and R = mean over the batch of the
    SUM over factor dimensions of |T(phi)/||T(phi)|| - E(psi)/||E(psi)|||."""
    from aft import prepare
    prepare_feature_files(tmp_path, cfg, 6, [4, 6])
    reg = started("ft", 6, [4, 6], cfg)
    out = capsys.readouterr().out
    assert "ft: training the autoencoder of t0 (4 -> 2) on 40 train rows" in out
    assert "ft: training the autoencoder of t1 (6 -> 3) on 40 train rows" in out
    for model in ("t0", "t1"):
        saved = torch.load(tmp_path / f"{model}_d.ft.pt", weights_only=True)
        assert saved["key"]["model"] == model and saved["heldout_mse"] > 0
    sizes = [(m.in_features, m.out_features) for m in reg.translator if isinstance(m, torch.nn.Linear)]
    assert sizes == [(6, 6), (6, 5), (5, 5)]  # d -> d -> D' -> D', D' = 2 + 3
    assert reg.translator[-1].weight.abs().sum() == 0  # the paper zero-initialises the last layer

    with torch.no_grad():  # a non-zero translator, so the reference is not trivially the bias
        reg.translator[-1].weight.normal_()
    rng = np.random.default_rng(6)
    phi, psi = rng.normal(size=(8, 6)), rng.normal(size=(8, 10))
    fs = mlp(reg.translator, phi, relu_last=False)
    ft_ = np.concatenate([mlp(reg.encoders[0], psi[:, :4], relu_last=True),
                          mlp(reg.encoders[1], psi[:, 4:], relu_last=True)], axis=1)
    fs = fs / np.linalg.norm(fs, axis=1, keepdims=True)
    ft_ = ft_ / np.maximum(np.linalg.norm(ft_, axis=1, keepdims=True), 1e-12)
    phi_t, psi_t = (torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (phi, psi))
    r = reg(phi_t, psi_t)
    assert r.item() == pytest.approx(np.abs(fs - ft_).sum(1).mean(), rel=1e-5)
    r.backward()
    assert phi_t.grad.abs().sum() > 0 and psi_t.grad is None
    assert all(p.grad is None for p in reg.encoders.parameters())  # frozen
    group, = reg.param_groups()
    assert {id(p) for p in group["params"]} == {id(p) for p in reg.translator.parameters()}
    assert group["weight_decay"] == 0 and "lr" not in group  # the model's lr, no decay: the paper's

    # reused when it matches, whatever the run's seed
    monkeypatch.setattr(prepare, "train_autoencoder", lambda *a: pytest.fail("the cached autoencoder was not reused"))
    torch.manual_seed(123)
    again = started("ft", 6, [4, 6], cfg)
    assert all(torch.equal(a, b) for a, b in zip(again.encoders.state_dict().values(),
                                                 reg.encoders.state_dict().values()))
    monkeypatch.undo()

    # other rows (train_frac, use_val) get their own file; other features retrain the file
    cfg.train_frac, cfg.use_val = 0.5, True
    started("ft", 6, [4, 6], cfg)
    assert (tmp_path / "t0_d.ft_train_frac=0.5_val.pt").exists() and "on 20 train rows" in capsys.readouterr().out
    cfg.train_frac, cfg.use_val = 1.0, False
    prepare_feature_files(tmp_path, cfg, 6, [4, 6], seed=1)
    started("ft", 6, [4, 6], cfg)
    assert "was made from other features or rows: training it again" in capsys.readouterr().out


def test_ft_autoencoder_compresses(monkeypatch):
    from aft import prepare
    monkeypatch.setattr(prepare, "AE_MAX_ROUNDS", 20)  # enough to show it learns; convergence takes longer
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g) @ torch.randn(2, 12, generator=g)  # rank 2 in 12 dims
    encoder, mse = prepare.train_autoencoder(x, 6, torch.device("cpu"))
    assert mse < 0.1 * x.var().item()
    assert F.mse_loss(encoder(x), prepare.train_autoencoder(x, 6, torch.device("cpu"))[0](x)) == 0  # seeded: the same every time


# ---- linear_probe -----------------------------------------------------------------------------

def test_linear_probe_learns_from_the_features_alone(cfg, tmp_path):
    """Features that hold the label: the probe gets them right on the held-out rows, with no model."""
    from aft.datasets import load_task
    from aft.experiment import run
    task = load_task("digits")
    g = torch.Generator().manual_seed(0)
    onehot = lambda y: torch.nn.functional.one_hot(y, 10).float() * 4 + torch.randn(len(y), 10, generator=g) * 0.3
    train, test = onehot(task.train.labels), onehot(task.test.labels)
    write_features(feature_path(str(tmp_path), "probe_teacher", "digits"), train, test,
                   make_meta("probe_teacher", "digits", train, test))
    cfg.features_dir, cfg.out_dir, cfg.dataset, cfg.pretrained_models = str(tmp_path), str(tmp_path / "res"), "digits", "probe_teacher"
    cfg.model_class, cfg.method, cfg.steps, cfg.eval_steps, cfg.lr, cfg.use_val = "resnet10t", "linear_probe", 60, 30, 0.1, True
    res = run(cfg)
    # the paper's split of 1437 rows: floor(0.9 n) + the one row left over, and floor(0.1 n)
    assert res.eval_split == "val" and res.n_eval == 143 and res.n_train == 1294
    assert [e["step"] for e in res.evals] == [30, 60] and res.final_acc > 0.95
    assert json.load(open(tmp_path / "res" / f"{res.run_name}.json"))["final_acc"] == res.final_acc


# ---- logme.py and run.py end to end -------------------------------------------------------------

TEACHERS = {"teacher_a": 24, "teacher_b": 16}  # random stand-ins for pre-trained models' features
STUDENT = ("efficientnet_lite2", 1280)  # a pre-trained student's "own features", for btune with --init_model
IMAGE_RUN = ["--dataset=digits", "--model_class=resnet10t", "--image_size=16", "--pretrained_models=teacher_a,teacher_b",
             "--steps=6", "--eval_steps=3", "--batch_size=32"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Feature files of digits for two teachers and the student, scored by logme.py itself."""
    from aft.datasets import load_task
    work = tmp_path_factory.mktemp("baselines")
    task = load_task("digits")
    g = torch.Generator().manual_seed(0)
    outputs = {}
    for model, dim in [*TEACHERS.items(), STUDENT]:
        path = feature_path(str(work / "features"), model, "digits")
        train, test = torch.randn(len(task.train), dim, generator=g), torch.randn(len(task.test), dim, generator=g)
        write_features(path, train, test, make_meta(model, "digits", train, test))
        inode = os.stat(path).st_ino
        out = cli("logme.py", f"--model_class={model}", "--dataset=digits", cwd=work)
        outputs[model] = (out.stdout, inode, train)
    return work, outputs


def test_logme_script_writes_keys_atomically_and_prints_the_score(workdir):
    from aft.datasets import load_task
    from aft.logme import logme
    work, outputs = workdir
    stdout, inode, train = outputs["teacher_a"]
    path = feature_path(str(work / "features"), "teacher_a", "digits")
    cache = torch.load(path, weights_only=True)
    score, weights = logme(train, load_task("digits").train.labels, num_classes=10)
    assert cache["logme_score"] == pytest.approx(score, rel=1e-9, abs=1e-12)
    assert torch.allclose(cache["logme_weights"], weights) and cache["logme_weights"].shape == (10, 24)
    assert torch.equal(cache["train"], train) and cache["meta"]["model"] == "teacher_a"  # the rest is kept
    assert f"LogME of teacher_a on digits (1437 train rows): {score:.4f}; saved logme_score, logme_weights (10, 24) in " \
           f"./features/teacher_a_digits.pt" in stdout
    assert os.stat(path).st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert not [f for f in os.listdir(work / "features") if f.startswith(".tmp")]


def test_logme_script_train_frac_and_missing_file(workdir):
    from aft.datasets import load_task, train_eval_indices
    from aft.logme import logme
    work, outputs = workdir
    out = cli("logme.py", "--model_class=teacher_b", "--dataset=digits", "--train_frac=0.5", cwd=work)
    cache = torch.load(feature_path(str(work / "features"), "teacher_b", "digits"), weights_only=True)
    rows, _ = train_eval_indices(1437, 0.5, use_val=False)
    score, _ = logme(outputs["teacher_b"][2][rows], load_task("digits").train.labels[rows], num_classes=10)
    assert cache["logme_score_train_frac=0.5"] == pytest.approx(score, rel=1e-9, abs=1e-12)
    assert cache["logme_weights_train_frac=0.5"].shape == (10, 16) and "logme_score" in cache  # both kept
    # the paper's split: floor(0.5 n) rows + the one left over
    assert "(719 train rows)" in out.stdout and "logme_score_train_frac=0.5" in out.stdout
    out = cli("logme.py", "--model_class=teacher_b", "--dataset=digits", "--use_val=True", cwd=work)
    cache = torch.load(feature_path(str(work / "features"), "teacher_b", "digits"), weights_only=True)
    rows, val = train_eval_indices(1437, 1.0, use_val=True)
    score, _ = logme(outputs["teacher_b"][2][rows], load_task("digits").train.labels[rows], num_classes=10)
    assert cache["logme_score_val"] == pytest.approx(score, rel=1e-9, abs=1e-12) and len(rows) + len(val) == 1437
    # floor(0.9 n) + the row left over; the others' keys are kept
    assert "(1294 train rows)" in out.stdout and "logme_score_train_frac=0.5" in cache
    out = cli("logme.py", "--model_class=nope", "--dataset=digits", cwd=work, check=False)
    assert out.returncode == 2 and "python save_features.py --model_class=nope --dataset=digits" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rkd", "aft_rbf", "aft_dense", "aft_no_kernel", "ft", "btune", "linear_probe"])
def test_run_every_baseline(workdir, method):
    work, _ = workdir
    out = cli("run.py", *IMAGE_RUN, f"--method={method}", "--prec=2", "--seed=3", cwd=work)
    beta = "_prec2" if get_method(method).takes_beta() else ""  # a name has beta only where the method has one
    name = f"digits_resnet10t_{method}{beta}_lr0.001_seed3"
    assert "final test accuracy:" in out.stdout and name in out.stdout
    res = json.load(open(result_file(work / "results", name)))
    assert res["config"]["method"] == method and [e["step"] for e in res["evals"]] == [3, 6]
    assert res["eval_split"] == "test" and res["n_train"] == 1437 and res["n_eval"] == 360
    assert res["final_acc"] == res["evals"][-1]["acc"] and 0 <= res["final_acc"] <= 1
    if method == "linear_probe":
        assert all(e["reg"] == 0 and e["loss"] == e["ce"] for e in res["evals"])
    else:
        assert all(e["reg"] > 0 for e in res["evals"])
    if method == "ft":
        assert all((work / "features" / f"{m}_digits.ft.pt").exists() for m in ("teacher_a", "teacher_b"))
    if method == "btune":  # resnet10t from random weights: no file of its own, its start is read
        assert "btune: resnet10t starts from random weights, so M_s is LogME of its features at initialisation " \
               "(1437 train rows, score " in out.stdout and "the pre-trained side's, so R reacts" in out.stdout


@pytest.mark.slow
def test_run_btune_with_a_pretrained_student(workdir):
    """With --init_model, M_s comes from the student's own cached features, scored by logme.py."""
    work, _ = workdir
    model = STUDENT[0]
    out = cli("run.py", *IMAGE_RUN, f"--model_class={model}", f"--init_model={model}", "--image_size=32",
              "--method=btune", "--prec=2", cwd=work)
    assert "starts from random weights" not in out.stdout
    res = json.load(open(result_file(work / "results", f"digits_{model}_btune_prec2_lr0.001_seed0")))
    assert res["config"]["init_model"] == model and all(e["reg"] > 0 for e in res["evals"])
    path = feature_path(str(work / "features"), model, "digits")
    cache = torch.load(path, weights_only=True)
    del cache["logme_score"]
    atomic_save(cache, path)
    line = cli("run.py", *IMAGE_RUN, f"--model_class={model}", f"--init_model={model}", "--image_size=32",
               "--method=btune", cwd=work, check=False).stderr.strip().splitlines()[-1]
    assert line.endswith(f"has no logme_score/logme_weights (B-Tuning needs LogME of {model}); "
                         f"run: python logme.py --model_class={model} --dataset=digits")
