"""The regularisers against independent computations of the papers' formulas."""
import numpy as np
import pytest
import torch

from aft.methods import METHODS, get_method
from aft.errors import UserError


def aft_reference(phi, psi, s):
    """AFT's regulariser (Qiu et al. 2024) written out in float64 numpy, entry by entry for the kernels."""
    phi, psi = phi.astype(np.float64), psi.astype(np.float64) / (1 + np.exp(-s))

    def kernel(a):
        a = a - a.mean(0)
        a = a / np.maximum(np.sqrt((a ** 2).sum(1, keepdims=True)), 1e-8)
        return np.array([[a[i] @ a[j] for j in range(len(a))] for i in range(len(a))])

    return np.sqrt(((kernel(phi) - kernel(psi)) ** 2).mean() + 1e-8)


def test_aft_matches_reference(cfg):
    rng = np.random.default_rng(0)
    phi, psi = rng.normal(size=(16, 6)), rng.normal(size=(16, 10))
    reg = get_method("aft")(6, [4, 6])
    with torch.no_grad():
        reg.scales.copy_(torch.from_numpy(rng.normal(size=10)))
    got = reg(torch.tensor(phi, dtype=torch.float32), torch.tensor(psi, dtype=torch.float32)).item()
    assert got == pytest.approx(aft_reference(phi, psi, reg.scales.detach().numpy()), rel=1e-5)


def test_aft_zero_for_rotated_scaled_teacher(cfg):
    torch.manual_seed(0)
    phi = torch.randn(32, 8, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(20, 8, dtype=torch.float64))[0].T  # 8 x 20, orthonormal rows
    psi = 3.7 * phi @ q
    reg = get_method("aft")(8, [20]).double()
    assert reg(phi, psi).item() == pytest.approx(1e-4, rel=1e-6)  # sqrt(0 + 1e-8)
    assert reg(phi, torch.randn(32, 20, dtype=torch.float64)).item() > 0.1


def test_aft_gradients_reach_model_and_scales(cfg):
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 7)
    reg = get_method("aft")(7, [9])
    reg(net(torch.randn(16, 5)), torch.randn(16, 9)).backward()
    assert net.weight.grad.abs().sum() > 0
    assert reg.scales.grad.abs().sum() > 0
    groups = reg.param_groups()
    assert groups[0]["lr"] == 1e-2 and groups[0]["weight_decay"] == 0  # 1e-2: --prior_lr's default


def test_aft_fixed_scales():
    aft = get_method("aft")
    reg = aft(7, [9], aft.Settings(learn_scales=False))
    assert not reg.scales.requires_grad and reg.param_groups() == []
    phi = torch.randn(16, 7, requires_grad=True)
    reg(phi, torch.randn(16, 9)).backward()
    assert reg.scales.grad is None and phi.grad is not None


def test_kd_matches_reference(cfg):
    torch.manual_seed(0)
    reg = get_method("kd")(6, [4, 5])
    phi, psi = torch.randn(10, 6), torch.randn(10, 9)
    w, b = reg.proj.weight.detach().numpy().astype(np.float64), reg.proj.bias.detach().numpy().astype(np.float64)
    ref = ((phi.numpy() @ w.T + b - psi.numpy()) ** 2).mean()
    assert reg(phi, psi).item() == pytest.approx(ref, rel=1e-5)
    reg(phi, psi).backward()
    assert reg.proj.weight.grad.abs().sum() > 0
    group, = reg.param_groups()
    assert group.keys() == {"params", "weight_decay"} and group["weight_decay"] == 0  # the model's lr, no decay


def test_init_has_no_regulariser(cfg):
    reg = get_method("init")(6, [])
    assert not reg.uses_teacher
    assert reg(torch.randn(4, 6), None).item() == 0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_follows_the_interface(name, cfg, tmp_path):
    from tests.test_baselines import prepare_feature_files, started
    prepare_feature_files(tmp_path, cfg, 6, [4, 5])  # the files some methods read (btune, ft)
    torch.manual_seed(0)
    cls = get_method(name)
    if not cls.trains_student:  # a classifier on the teachers' features alone (aft.probe trains it)
        assert cls([4, 5], 3)(torch.randn(12, 9)).shape == (12, 3)
        return
    reg = started(name, 6, [4, 5], cfg)
    phi = torch.randn(12, 6, requires_grad=True)
    r = reg(phi, torch.randn(12, 9) if cls.uses_teacher else None)
    assert r.shape == () and torch.isfinite(r)
    for group in reg.param_groups():
        assert all(p.requires_grad for p in group["params"])


def test_unknown_method_lists_valid_names():
    with pytest.raises(UserError, match="valid methods: .*aft.*init.*kd"):
        get_method("nope")


def test_regulariser_weights_get_no_weight_decay(cfg, tmp_path):
    """The paper's optimizer: the downstream model's group carries --wd, the regulariser's own
    parameters (kd's map, ft's translator, AFT's scales) none; checked on the optimizer a real
    Trainer builds."""
    from aft.datasets import load_task, train_eval_indices
    from aft.features import make_meta, write_features
    from aft.plan import make_plan
    from aft.teachers import load_teachers
    from aft.train import Trainer
    task = load_task("digits")
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(len(task.train), 5, generator=g), torch.randn(len(task.test), 5, generator=g)
    write_features(str(tmp_path / "t_digits.pt"), train, test, make_meta("t", "digits", train, test))
    cfg.dataset, cfg.model_class, cfg.image_size, cfg.pretrained_models = "digits", "resnet10t", 8, "t"
    cfg.features_dir, cfg.method, cfg.wd, cfg.optimizer = str(tmp_path), "kd", 0.5, "sgd"
    rows, _ = train_eval_indices(len(task.train), 0.1, False)
    plan = make_plan(cfg)
    teachers = load_teachers(plan, task, rows, None)
    trainer = Trainer(plan, task, rows, task.test, teachers)
    model_group, kd_group = trainer.optimizer.param_groups
    assert model_group["weight_decay"] == 0.5 and kd_group["weight_decay"] == 0
    assert {id(p) for p in kd_group["params"]} == {id(p) for p in trainer.method.parameters()}


def test_aft_dense_map_is_fixed_without_learn_scales():
    dense = get_method("aft_dense")
    fixed = dense(4, [6], dense.Settings(learn_scales=False))
    assert not fixed.mix.requires_grad and fixed.param_groups() == []
    learned = get_method("aft_dense")(4, [6])
    group, = learned.param_groups()
    assert group["params"] == [learned.mix] and group["lr"] == 1e-2 and group["weight_decay"] == 0
