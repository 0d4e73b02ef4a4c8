"""The tensor-product path (SNLI-VE): every method that reads the product of the pre-trained models'
features, or a product student's phi (CLIP's image (x) text), against the paper's formula computed
here on the written-out outer products (numpy, float64); and the widths of CLIP's size computed
without ever writing the 1,048,576-wide rows out."""
import numpy as np
import pytest
import torch

from aft.methods import get_method
from aft.product import Product, ProductLinear, join_features
from tests.test_baselines import rkd_reference


def outer(*factors):
    """Rows a (x) b (x) ... written out, as the paper's einsum('bi,bj->bij').reshape(B, -1)."""
    out = factors[0]
    for f in factors[1:]:
        out = (out[:, :, None] * f[:, None, :]).reshape(len(out), -1)
    return out


def paper_kernel(a, rbf=False):
    """The paper's KernelPrior: centre per dimension, divide by (norm + 1e-8), then the kernel."""
    a = a - a.mean(0, keepdims=True)
    a = a / (np.sqrt((a ** 2).sum(1, keepdims=True)) + 1e-8)
    if rbf:
        return np.exp(-((a[:, None, :] - a[None, :, :]) ** 2).sum(-1))
    return a @ a.T


def paper_aft(phi, psi_scaled, rbf=False):
    return np.sqrt(((paper_kernel(phi, rbf) - paper_kernel(psi_scaled, rbf)) ** 2).mean() + 1e-8)


def sigmoid(s):
    return 1 / (1 + np.exp(-s))


def random_factors(rng, b, dims):
    return [rng.normal(size=(b, d)) + rng.normal(size=d) for d in dims]  # an offset: centring matters


def tensors(arrays):
    return [torch.tensor(a, dtype=torch.float32) for a in arrays]


def test_gram_of_a_product_is_that_of_its_rows():
    rng = np.random.default_rng(0)
    a, b, c = random_factors(rng, 6, [3, 4, 2])
    flat = outer(a, b, c)
    got = Product(torch.tensor(x) for x in (a, b, c)).gram()
    np.testing.assert_allclose(got.numpy(), flat @ flat.T, rtol=1e-12)
    assert Product(tensors([a, b])).width == 12
    torch.testing.assert_close(Product(tensors([a, b])).flatten(), torch.tensor(outer(a, b), dtype=torch.float32))


@pytest.mark.parametrize("method, rbf", [("aft", False), ("aft_rbf", True)])
def test_aft_on_the_product_of_the_scaled_teachers(method, rbf):
    """psi' = (psi_1 * sigmoid(s_1)) (x) (psi_2 * sigmoid(s_2)), as the paper's KernelPrior with
    tensor_product; phi a plain student's features."""
    rng = np.random.default_rng(1)
    phi = rng.normal(size=(12, 5))
    psi1, psi2 = random_factors(rng, 12, [4, 6])
    reg = get_method(method)(5, [4, 6]).double()
    with torch.no_grad():
        reg.scales.copy_(torch.from_numpy(rng.normal(size=10)))
    s = reg.scales.detach().numpy()
    want = paper_aft(phi, outer(psi1 * sigmoid(s[:4]), psi2 * sigmoid(s[4:])), rbf)
    got = reg(torch.tensor(phi), Product([torch.tensor(psi1), torch.tensor(psi2)]))
    assert got.item() == pytest.approx(want, rel=1e-7)


def test_aft_with_a_product_student_and_its_gradients():
    """CLIP's phi is image (x) text: its kernel, too, comes from its factors; gradients reach both."""
    rng = np.random.default_rng(2)
    img, txt = random_factors(rng, 10, [3, 5])
    psi1, psi2 = random_factors(rng, 10, [4, 2])
    reg = get_method("aft")([3, 5], [4, 2]).double()
    want = paper_aft(outer(img, txt), outer(psi1 * 0.5, psi2 * 0.5))
    factors = [torch.tensor(img, requires_grad=True), torch.tensor(txt, requires_grad=True)]
    got = reg(Product(factors), Product([torch.tensor(psi1), torch.tensor(psi2)]))
    assert got.item() == pytest.approx(want, rel=1e-7)
    got.backward()
    assert all(f.grad.abs().sum() > 0 for f in factors) and reg.scales.grad.abs().sum() > 0


def test_rkd_on_products_is_rkd_on_the_written_out_rows():
    rng = np.random.default_rng(3)
    img, txt = random_factors(rng, 7, [3, 2])
    psi1, psi2 = random_factors(rng, 7, [2, 3])
    got = get_method("rkd")([3, 2], [2, 3])(Product(tensors([img, txt])), Product(tensors([psi1, psi2])))
    assert got.item() == pytest.approx(rkd_reference(outer(img, txt), outer(psi1, psi2)), rel=1e-4)


def test_kd_maps_each_factor_of_a_product_student_to_its_model():
    """The paper's KDPrior with tensor_product: CLIP's image embedding -> the first model's features,
    its text embedding -> the second's, R the mean of the two mean squared errors."""
    torch.manual_seed(0)
    reg = get_method("kd")([6, 5], [4, 3])
    img, txt, psi = torch.randn(9, 6), torch.randn(9, 5), torch.randn(9, 7)
    (w1, b1), (w2, b2) = [(p.weight.detach().double().numpy(), p.bias.detach().double().numpy()) for p in reg.proj]
    want = np.mean([((img.double().numpy() @ w1.T + b1 - psi[:, :4].double().numpy()) ** 2).mean(),
                    ((txt.double().numpy() @ w2.T + b2 - psi[:, 4:].double().numpy()) ** 2).mean()])
    assert reg(Product([img, txt]), psi).item() == pytest.approx(want, rel=1e-5)
    assert sum(p.numel() for p in reg.parameters()) == (6 * 4 + 4) + (5 * 3 + 3)  # no map from the product


def test_product_linear_is_a_linear_layer_on_the_written_out_product():
    torch.manual_seed(0)
    head = ProductLinear([4, 3], 5)
    torch.manual_seed(0)
    flat = torch.nn.Linear(12, 5)  # the same random draws: the paper's nn.Linear(d_1 d_2, C)
    torch.testing.assert_close(head.weight.reshape(5, 12), flat.weight)
    torch.testing.assert_close(head.bias, flat.bias)
    a, b = torch.randn(8, 4), torch.randn(8, 3)
    torch.testing.assert_close(head(Product([a, b])), flat(Product([a, b]).flatten()))


def test_linear_probe_on_two_models_is_product_linear():
    """The paper's ProductLinearModel: the features of the two models, multiplied out, then linear."""
    probe = get_method("linear_probe")([4, 3], 2, product=True)
    a, b = torch.randn(6, 4), torch.randn(6, 3)
    w, bias = probe.linear.weight.detach(), probe.linear.bias.detach()
    want = outer(a.double().numpy(), b.double().numpy()) @ w.reshape(2, 12).double().numpy().T + bias.double().numpy()
    np.testing.assert_allclose(probe(join_features([a, b], product=True)).detach().double().numpy(), want, rtol=1e-5)
    assert isinstance(get_method("linear_probe")([4], 2, product=True).linear, torch.nn.Linear)


def test_clip_sized_products_are_never_written_out(monkeypatch):
    """At CLIP's size (1024 x 1024 per row) the head, aft, rkd and kd work from the factors alone."""
    def written_out(self):
        raise AssertionError("a 1,048,576-wide product was written out")
    monkeypatch.setattr(Product, "flatten", written_out)
    torch.manual_seed(0)
    img, txt = torch.randn(8, 1024, requires_grad=True), torch.randn(8, 1024)
    phi, psi = Product([img, txt]), Product([torch.randn(8, 1536), torch.randn(8, 384)])
    head = ProductLinear([1024, 1024], 3)
    loss = head(phi).sum() + get_method("aft")([1024, 1024], [1536, 384])(phi, psi) \
        + get_method("rkd")([1024, 1024], [1536, 384])(phi, psi) \
        + get_method("kd")([1024, 1024], [1536, 384])(phi, torch.cat(psi.factors, 1))
    loss.backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0


# ---- what runs on SNLI-VE, said before any work -----------------------------------------------------

SNLI = dict(dataset="snli-ve", pretrained_models="efficientnet_lite2,all-MiniLM-L6-v2")


@pytest.mark.parametrize("overrides, message", [
    (dict(model_class="resnet10t", method="aft_dense"),
     "--method=aft_dense has no form for snli-ve, whose pre-trained features combine as a tensor product"),
    (dict(model_class="resnet10t", method="aft_no_kernel"), "--method=aft_no_kernel has no form for snli-ve"),
    (dict(model_class="CLIP", method="btune"),
     "--method=btune cannot take a downstream model whose features are the image x text outer product"),
    (dict(model_class="CLIP", method="ft"), "--method=ft cannot take a downstream model"),
    (dict(model_class="CLIP", method="kd", pretrained_models="all-MiniLM-L6-v2,efficientnet_lite2"),
     "--pretrained_models must be a image model then a text model; these are text, image"),
    (dict(method="linear_probe", pretrained_models="efficientnet_lite2,all-MiniLM-L6-v2,efficientnet_lite2"),
     "pass one or two --pretrained_models, not 3"),
    (dict(model_class="resnet10t", method="aft", pretrained_models="CLIP"), "CLIP can only be the downstream model"),
])
def test_what_has_no_tensor_product_form_is_refused_before_any_work(tmp_path, overrides, message):
    from aft.config import Config
    from aft.errors import UserError
    from aft.plan import make_plan
    cfg = Config(**{**SNLI, "features_dir": str(tmp_path), **overrides})
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        make_plan(cfg)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("overrides", [dict(model_class="CLIP", method="kd"), dict(model_class="CLIP", method="rkd"),
                                       dict(model_class="resnet10t", method="btune"), dict(method="linear_probe")])
def test_what_has_one_passes(tmp_path, overrides):
    """Accepted, planned as asked (the image model's features then the text model's), and before any work."""
    from aft.config import Config
    from aft.methods import get_method
    from aft.plan import make_plan
    plan = make_plan(Config(**{**SNLI, "features_dir": str(tmp_path), **overrides}))
    assert plan.method is get_method(overrides["method"]) and plan.dataset.modality == "image_text"
    assert [t.name for t in plan.teachers] == ["efficientnet_lite2", "all-MiniLM-L6-v2"]
    assert (plan.student.name if plan.student else None) == overrides.get("model_class")
    assert not any(tmp_path.iterdir())


def test_linear_probe_on_snli_ve_is_linear_in_the_product(tmp_path, monkeypatch):
    """The paper's ProductLinearModel on an image model's and a text model's features, end to end: its
    weights are (classes x image features x text features)."""
    from aft.config import Config
    from aft.experiment import run
    from tests.test_paper_datasets import write_snli_ve
    write_snli_ve(str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    res = run(Config(**SNLI, data_dir="data", method="linear_probe", steps=2, eval_steps=2, batch_size=2,
                     teacher_image_size=32, ckpt_dir="ckpt", run_name="probe"))
    assert res.n_train == 5 and 0 <= res.final_acc <= 1 and res.decoded_size == 32
    state = torch.load(tmp_path / "ckpt" / "probe.pt", weights_only=True)
    assert state["model"]["linear.weight"].shape == (3, 1280, 384)
