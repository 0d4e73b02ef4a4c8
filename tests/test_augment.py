"""--method=init --no_augment=False trains on timm's training transform (RandomResizedCrop, flip,
ColorJitter), done on the device for the whole batch: each part against torchvision's, timm's or
the formula's own result, the draws against timm's bounds, the batch it makes, and the runs that
take it or refuse it."""
import itertools
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.transforms import InterpolationMode

import aft.experiment
import aft.inputs
from aft.config import Config
from aft.errors import UserError
from aft.inputs import ImageInputs, color_jitter, resized_crop, sample_crops
from aft.methods import METHODS, get_method
from aft.plan import make_plan

ASKED = SimpleNamespace(no_augment=False)  # settings asking for augmentation, of the methods that read them
REFUSED = ("--no_augment=False: augmentation is only for --method=init (the paper's code asserts it); "
           "drop --no_augment or use --method=init")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def draws(monkeypatch):
    """What timm_train_transform draws, recorded as it passes them on: {"flip": [...], "factors": [...],
    "order": [...]}, one tensor per call."""
    seen = {"flip": [], "factors": [], "order": []}

    def crop(x, top, left, height, width, size, interpolation, flip):
        seen["flip"].append(flip)
        return resized_crop(x, top, left, height, width, size, interpolation, flip)

    def jitter(x, factors, order):
        seen["factors"].append(factors)
        seen["order"].append(order)
        return color_jitter(x, factors, order)

    monkeypatch.setattr(aft.inputs, "resized_crop", crop)
    monkeypatch.setattr(aft.inputs, "color_jitter", jitter)
    return seen


# ---- each part against PIL's, which timm's transform runs on -----------------------------------------

def pil(x):
    return Image.fromarray(x.permute(1, 2, 0).to(torch.uint8).numpy())


def levels(picture):
    return torch.from_numpy(np.array(picture)).permute(2, 0, 1).float()


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [7, 40])  # shrinking and enlarging the crops
def test_crop_and_flip_are_pils_resized_crop(interpolation, size):
    """torchvision's resized_crop of a PIL picture (timm's RandomResizedCrop) and its flip: the same
    levels, but where PIL's fixed-point weights round the other way (a level, rarely two, where its
    two passes' roundings add up)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, 3, 24, 24), generator=g).float()
    top, left = torch.tensor([0., 3, 10, 0, 23]), torch.tensor([0., 5, 2, 14, 0])
    height, width = torch.tensor([24., 7, 14, 5, 1]), torch.tensor([24., 19, 9, 10, 24])  # rectangles, a line
    flip = torch.tensor([False, True, False, True, True])
    out = resized_crop(x, top, left, height, width, size, interpolation, flip)
    assert out.shape == (5, 3, size, size) and torch.equal(out, out.round())  # whole levels, as PIL stores them
    for i in range(5):
        expected = TF.resized_crop(pil(x[i]), int(top[i]), int(left[i]), int(height[i]), int(width[i]), [size, size],
                                   interpolation=InterpolationMode(interpolation))
        expected = levels(TF.hflip(expected) if flip[i] else expected)
        differ = (out[i] - expected).abs()
        assert differ.max() <= 2 and differ.mean() < 0.05, (i, differ.max(), differ.mean())


def test_color_jitter_is_pils_adjustments_in_each_order():
    """Six pictures, each jittered in another of the six orders, with factors on both sides of 1: the
    levels torchvision's adjustments of a PIL picture give (PIL's blends, truncated to uint8)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 5, 5), generator=g).float()
    factors = 0.6 + 0.8 * torch.rand(6, 3, generator=g)
    orders = torch.tensor(list(itertools.permutations(range(3))))
    adjust = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]
    out = color_jitter(x, factors, orders)
    for i, order in enumerate(orders.tolist()):
        expected = pil(x[i])
        for op in order:
            expected = adjust[op](expected, factors[i, op].item())
        assert torch.equal(out[i], levels(expected)), i


# ---- the draws -------------------------------------------------------------------------------------

def test_crops_keep_timms_bounds_and_distribution():
    side, n = 32, 20_000
    torch.manual_seed(0)
    top, left, height, width = sample_crops(n, side, torch.device("cpu"))
    for v in (top, left, height, width):
        assert torch.equal(v, v.round())
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= side).all() and (left + width <= side).all()
    # The area fraction and aspect ratio within timm's ranges, up to rounding each side to a pixel
    assert ((height + 0.5) * (width + 0.5) >= 0.08 * side ** 2).all()
    assert ((width + 0.5) / (height - 0.5) >= 3 / 4).all() and ((width - 0.5) / (height + 0.5) <= 4 / 3).all()
    # Offsets anywhere the box fits: both ends are reached
    smaller = height < side
    assert (top[smaller] == 0).any() and (top[smaller] == (side - height)[smaller]).any()
    # The same distribution as timm's own sampler
    random.seed(0)
    picture = Image.new("RGB", (side, side))
    boxes = torch.tensor([RandomResizedCropAndInterpolation.get_params(picture, (0.08, 1.0), (3 / 4, 4 / 3))
                          for _ in range(n)], dtype=torch.float)
    ours = torch.stack([top, left, height, width], 1)
    fraction = lambda b: b[:, 2] * b[:, 3] / side ** 2
    assert abs(fraction(ours).mean() - fraction(boxes).mean()) < 0.01
    assert abs((ours[:, 3] / ours[:, 2]).log().mean() - (boxes[:, 3] / boxes[:, 2]).log().mean()) < 0.01
    assert abs((ours[:, 0] / side).mean() - (boxes[:, 0] / side).mean()) < 0.01


def test_flips_and_jitter_draws(draws):
    n = 6000
    inputs = ImageInputs(torch.zeros(n, 3, 8, 8, dtype=torch.uint8), 8, [0.5] * 3, [0.25] * 3)
    torch.manual_seed(0)
    inputs.batch(torch.arange(n), augment=True)
    flip, factors, order = draws["flip"][0], draws["factors"][0], draws["order"][0]
    assert abs(flip.float().mean() - 0.5) < 0.03
    assert factors.shape == (n, 3) and (factors >= 0.6).all() and (factors <= 1.4).all()
    assert abs(factors.mean() - 1) < 0.01 and factors.min() < 0.61 and factors.max() > 1.39
    assert torch.equal(order.sort(1).values, torch.arange(3).expand(n, 3))  # each row a permutation
    counts = torch.unique(order, dim=0, return_counts=True)[1]
    assert len(counts) == 6 and (abs(counts / n - 1 / 6) < 0.03).all()


# ---- the batch -------------------------------------------------------------------------------------

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_augmented_batch_has_the_models_size_and_normalisation(interpolation, monkeypatch):
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    black = ImageInputs(torch.zeros(4, 1, 12, 12, dtype=torch.uint8), 20, MEAN, STD, interpolation=interpolation)
    x = black.batch(torch.arange(4), augment=True)  # every jitter leaves black black
    assert x.shape == (4, 3, 20, 20)
    torch.testing.assert_close(x, (-mean / std).expand(4, 3, 20, 20), atol=1e-5, rtol=0)
    monkeypatch.setattr(aft.inputs, "color_jitter", lambda x, factors, order: x)
    grey = ImageInputs(torch.full((4, 3, 12, 12), 100, dtype=torch.uint8), 20, MEAN, STD, interpolation=interpolation)
    x = grey.batch(torch.arange(4), augment=True)
    torch.testing.assert_close(x, ((100 / 255 - mean) / std).expand(4, 3, 20, 20), atol=1e-4, rtol=0)


def test_augmented_batches_are_random_and_reproducible():
    g = torch.Generator().manual_seed(0)
    inputs = ImageInputs(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=g), 12, MEAN, STD,
                         interpolation="bicubic")
    idx = torch.arange(8)
    torch.manual_seed(1)
    first, second = inputs.batch(idx, augment=True), inputs.batch(idx, augment=True)
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, inputs.batch(idx))  # not the eval transform
    torch.manual_seed(1)
    assert torch.equal(inputs.batch(idx, augment=True), first)
    inputs.channels_last = True  # as on CUDA: the batch comes out NHWC, with the same values
    torch.manual_seed(1)
    nhwc = inputs.batch(idx, augment=True)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and torch.equal(nhwc, first)


# ---- the runs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(m for m in METHODS if not get_method(m).augments(ASKED)))
def test_no_augment_false_is_refused_unless_the_method_augments(method):
    with pytest.raises(UserError) as err:
        make_plan(Config(method=method, method_args={"no_augment": False}))
    assert str(err.value) == REFUSED


def test_no_augment_false_is_accepted_with_init_on_text():
    """tweets: accepted, and it changes nothing (no picture to augment), so the run is the default's;
    under --paper_exact it chooses the paper's batches (a new list each epoch), so there it counts."""
    plan = make_plan(Config(method="init", method_args={"no_augment": False}))
    assert plan.run_name == make_plan(Config(method="init")).run_name and "no_augment" not in plan.identity
    exact = Config(method="init", method_args={"no_augment": False}, paper_exact=True)
    assert make_plan(exact).run_name != make_plan(Config(method="init", paper_exact=True)).run_name


def test_init_trains_on_augmented_batches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []
    batch = ImageInputs.batch

    def recorded(self, idx, width=None, augment=False):
        x = batch(self, idx, width, augment)
        if augment:  # what the eval transform gives the same rows
            calls.append(not torch.allclose(x, batch(self, idx, width, False)))
        return x

    monkeypatch.setattr(ImageInputs, "batch", recorded)
    cfg = Config(dataset="digits", model_class="resnet10t", image_size=16, method="init", method_args={"no_augment": False}, steps=2,
                 eval_steps=2, batch_size=8, pretrained_models="", out_dir=str(tmp_path / "results"),
                 features_dir=str(tmp_path / "features"))
    results = aft.experiment.run(cfg)
    assert calls == [True, True]  # both train steps augmented, each unlike the eval transform
    assert math.isfinite(results.final_acc)


def test_a_large_evaluation_batch_is_made_float_in_parts_with_the_same_numbers(monkeypatch):
    """Pictures are made float FLOAT_ROWS at a time before the resize (an evaluation batch of 512 at 320 px
    would take 315 MB of floats at once): the numbers are those of the whole batch, bit for bit."""
    import aft.inputs
    pictures = torch.randint(0, 256, (30, 3, 40, 40), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    inputs = ImageInputs(pictures, 16, [0.5] * 3, [0.25] * 3, interpolation="bicubic", crop_pct=0.9)
    rows = torch.randperm(30, generator=torch.Generator().manual_seed(1))
    whole = inputs.batch(rows)
    seen = []
    transform = inputs.eval_transform
    monkeypatch.setattr(aft.inputs, "FLOAT_ROWS", 8)
    monkeypatch.setattr(inputs, "eval_transform", lambda x: seen.append(len(x)) or transform(x))
    assert torch.equal(inputs.batch(rows), whole) and seen == [8, 8, 8, 6]
