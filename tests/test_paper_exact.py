"""A run's pixels depend on its flags alone, and --paper_exact computes as the paper's code does, each
point against the paper's formula written out here or against timm and PIL themselves: the decode
(timm's eval transform), the augmentation (timm's training transform on each original picture), the
schedule and batches (its train.py), the factor-transfer autoencoder (its train_ae.py), RKD's teachers
side by side on SNLI-VE, fp32 in one process, learn_scales=False, pre-trained Hugging Face students."""
import copy
import json
import random

import numpy as np
import pytest
import timm.data
import torch
import torch.nn.functional as F
from PIL import Image

import aft.prepare
import aft.train
from aft.config import Config
from aft.datasets import load_task
from aft.datasets.decode import Decoding, decoded_folder
from aft.distributed import World
from aft.errors import UserError
from aft.experiment import run
from aft.inputs import ImageInputs
from aft.methods import get_method
from aft.models import resolve_model
from aft.optim import Batching
from aft.plan import make_plan
from aft.prepare import fresh_autoencoder, train_autoencoder_paper
from aft.product import join_features
from tests.test_baselines import rkd_reference
from tests.test_families import build_image_family
from tests.test_paper_datasets import write_dtd

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def picture(width, height, seed):
    """A non-square picture with both smooth and sharp detail (noise over a gradient)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 55, height)[:, None, None]
    return Image.fromarray((ramp + rng.integers(0, 60, (height, width, 3))).clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def pictures_and_teacher(tmp_path_factory):
    """A folder of pictures of varied shapes in two classes (6 train, 2 test), and a pre-trained model
    in a local folder that reads them at 32 px (decoded at its own side, not the student's)."""
    root = tmp_path_factory.mktemp("paper_exact")
    for split, n in (("train", 3), ("test", 1)):
        for c, name in enumerate(("cat", "dog")):
            (root / "pics" / split / name).mkdir(parents=True)
            for i in range(n):
                picture(30 + 9 * i, 44 - 7 * i, 10 * c + i).save(root / "pics" / split / name / f"{i}.png")
    build_image_family("resnet", str(root / "teacher"))
    return root


def first_inputs(monkeypatch):
    """The downstream model's inputs of each forward pass, as the run makes them."""
    seen = []
    build = aft.train.build_classifier

    def recording(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
        return model
    monkeypatch.setattr(aft.train, "build_classifier", recording)
    return seen


def own_run(root, tmp_path, **changes):
    return Config(**{**dict(dataset=str(root / "pics"), model_class="resnet10t", image_size=16,
                            method="aft", prec=1.0, pretrained_models=str(root / "teacher"), steps=1, eval_steps=1,
                            batch_size=4, device="cpu", features_dir=str(tmp_path / "features"),
                            out_dir=str(tmp_path / "out")), **changes})


# ---- a run's pixels: its flags', whatever is cached ---------------------------------------------------

def test_the_students_pixels_are_the_same_with_and_without_the_teachers_cache(pictures_and_teacher, tmp_path,
                                                                               monkeypatch):
    """The same command twice: first the teacher's features are computed (its pictures decoded at its
    side, 32 / 0.875), then read from its cache. The student's first batch is the same to the bit, from
    pictures decoded at its own side (16 / 0.875)."""
    seen = first_inputs(monkeypatch)
    cfg = own_run(pictures_and_teacher, tmp_path)
    teacher_cache = make_plan(cfg).teachers[0].cache
    first = run(cfg)
    without_cache = seen[0]
    assert torch.load(teacher_cache, weights_only=True)["meta"]["decoded_size"] == 36  # the teacher's own side
    seen.clear()
    second = run(own_run(pictures_and_teacher, tmp_path, out_dir=str(tmp_path / "again")))
    assert torch.equal(seen[0], without_cache)
    assert first.decoded_size == second.decoded_size == 18  # recorded with the results


# ---- the decode: timm's eval transform ----------------------------------------------------------------

@pytest.mark.parametrize("size, crop_pct, interpolation", [(24, 0.875, "bicubic"), (20, 1.0, "bilinear"),
                                                           (17, 0.9, "bicubic")])
def test_paper_decode_is_timms_eval_transform(size, crop_pct, interpolation):
    """Pictures wider and taller than square (and an odd fractional crop) decoded under --paper_exact,
    then normalised as a run does, are what timm's create_transform(is_training=False) makes of them."""
    reference = timm.data.create_transform(input_size=size, crop_pct=crop_pct, interpolation=interpolation,
                                           mean=MEAN, std=STD, is_training=False)
    pictures = [picture(64, 43, 0), picture(37, 90, 1), picture(31, 31, 2)]
    decoding = Decoding(size, timm=(size, crop_pct, interpolation))
    decoded = torch.stack([decoding(p) for p in pictures])
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 3, size, size)
    inputs = ImageInputs(decoded, size, MEAN, STD, crop_pct=1.0, interpolation=interpolation)  # model-ready
    got = inputs.batch(torch.arange(3))
    expected = torch.stack([reference(p) for p in pictures])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_default_decode_of_a_bicubic_model_is_timms_eval_transform():
    """Without --paper_exact a picture is decoded to a square at the model's resize side (224 / 0.9),
    which the model crops on the device: for a bicubic model, timm's eval transform to the pixel."""
    reference = timm.data.create_transform(input_size=224, crop_pct=0.9, interpolation="bicubic", mean=MEAN,
                                           std=STD, is_training=False)
    pictures = [picture(371, 248, 3), picture(300, 457, 4), picture(640, 427, 5)]
    decoded = torch.stack([Decoding(248)(p) for p in pictures])
    got = ImageInputs(decoded, 224, MEAN, STD, crop_pct=0.9, interpolation="bicubic").batch(torch.arange(3))
    torch.testing.assert_close(got, torch.stack([reference(p) for p in pictures]), rtol=0, atol=1e-5)


def test_paper_run_reads_timms_crops_and_trains_whole_epochs(pictures_and_teacher, tmp_path, monkeypatch):
    """--paper_exact end to end: the student's first batch is the first of the paper's batches (the
    short last one kept), each picture as timm's eval transform makes it of the file on disk; the
    teacher's cache says its pictures were decoded so; 6 rows in batches of 4 for 3 steps are 2 whole
    epochs of 2 batches, 4 steps."""
    seen = first_inputs(monkeypatch)
    cfg = own_run(pictures_and_teacher, tmp_path, paper_exact=True, steps=3, eval_steps=100)
    record = run(cfg)
    assert record.steps == 4 and record.precision == "fp32"
    spec = resolve_model("resnet10t")
    p = spec.image_preprocess(16)
    reference = timm.data.create_transform(input_size=p["size"], crop_pct=p["crop_pct"],
                                           interpolation=p["interpolation"], mean=p["mean"], std=p["std"])
    originals = load_task(cfg.dataset, None, Decoding(16)).train.originals
    rows = Batching(6, 4, 0, paper=True, fixed=True, steps_asked=3).batches(0)[0]
    expected = torch.stack([reference(originals(r).convert("RGB")) for r in rows.tolist()])
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=1e-5)
    assert [len(x) for x in seen[:4]] == [4, 2, 4, 2]  # training passes (the evaluation comes last)
    meta = torch.load(make_plan(cfg).teachers[0].cache, weights_only=True)["meta"]
    assert meta["paper_pictures"] is True
    with pytest.raises(UserError, match="decoded with --paper_exact, and this run is not --paper_exact"):
        run(own_run(pictures_and_teacher, tmp_path))  # the other decoding's features are never mixed in


def test_decoded_pictures_of_an_earlier_geometry_are_decoded_anew(tmp_path, monkeypatch):
    """A decoded file whose header does not say it was made with today's geometry (an earlier
    version's) is not reused: the pictures are decoded again."""
    monkeypatch.delenv("AFT_IMAGE_SIZE", raising=False)
    write_dtd(str(tmp_path))
    fresh = load_task("dtd", str(tmp_path), 40).train.inputs.load()
    header = decoded_folder(str(tmp_path)) + "/dtd-train-40px.json"
    old = json.load(open(header))
    del old["geometry"]
    json.dump(old, open(header, "w"))
    with open(header.replace(".json", ".u8"), "r+b") as f:
        f.write(bytes(64))  # what an earlier decoder left there differs
    again = load_task("dtd", str(tmp_path), 40).train.inputs.load()
    assert torch.equal(again, fresh) and "geometry" in json.load(open(header))


# ---- the augmentation: timm's training transform on each original picture ----------------------------

def test_paper_augmentation_is_timms_train_transform_on_the_originals():
    """Rows 2, 0, 1 augmented under --paper_exact are timm's create_transform(is_training=True) of each
    original picture, in that order, from the same seeds (timm's crop draws from Python's random, its
    flip and jitter from torch's)."""
    pictures = [picture(64, 43, 0), picture(37, 90, 1), picture(50, 50, 2)]
    inputs = ImageInputs(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), 16, MEAN, STD, interpolation="bicubic")
    inputs.augment_as_paper(lambda i: pictures[i])
    random.seed(5)
    torch.manual_seed(5)
    got = inputs.batch(torch.tensor([2, 0, 1]), augment=True)
    reference = timm.data.create_transform(input_size=16, is_training=True, interpolation="bicubic", mean=MEAN,
                                           std=STD)
    random.seed(5)
    torch.manual_seed(5)
    expected = torch.stack([reference(pictures[i]) for i in (2, 0, 1)])
    assert torch.equal(got, expected)
    assert not torch.equal(got, inputs.batch(torch.tensor([2, 0, 1]), augment=True))  # fresh draws each time


# ---- the schedule and the batches: the paper's train.py ------------------------------------------------

def paper_epochs(n, batch_size, steps, lr):
    """The paper's train.py: DataLoader batches (the short last one kept), int(steps / batches + 0.5)
    epochs, CosineAnnealingLR(T_max=epochs) stepped after each epoch. [(lr, batch rows)] per step."""
    per_epoch = len(torch.utils.data.DataLoader(range(n), batch_size=batch_size))
    epochs = int(steps / per_epoch + 0.5)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    out = []
    for _ in range(epochs):
        out += [(optimizer.param_groups[0]["lr"], min(batch_size, n - b * batch_size)) for b in range(per_epoch)]
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("n, batch_size, steps", [(10, 4, 7), (10, 4, 20), (128, 32, 13), (50, 7, 100)])
def test_paper_schedule_and_batches_are_its_train_loops(n, batch_size, steps):
    batching = Batching(n, batch_size, seed=0, paper=True, fixed=False, steps_asked=steps)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = batching.schedule(optimizer)
    got = []
    for epoch in range(batching.epochs):
        batches = batching.batches(epoch)
        assert torch.equal(torch.cat(batches).sort().values, torch.arange(n))  # every row once per epoch
        for b in batches:
            got.append((optimizer.param_groups[0]["lr"], len(b)))
            optimizer.step()
            scheduler.step()
    expected = paper_epochs(n, batch_size, steps, 0.1)
    assert batching.steps == len(got) == len(expected)
    assert [s for _, s in got] == [s for _, s in expected]
    assert [lr for lr, _ in got] == pytest.approx([lr for lr, _ in expected], rel=1e-12, abs=1e-15)


def test_paper_batches_are_one_fixed_list_without_augmentation_up_to_100_batches():
    """The paper's run.py freezes a loader of at most 100 batches into a list when it does not augment:
    every epoch then sees the same batches; more batches, or augmentation, are drawn afresh."""
    fixed = Batching(40, 4, seed=3, paper=True, fixed=True, steps_asked=50)
    assert all(torch.equal(a, b) for a, b in zip(fixed.batches(0), fixed.batches(4)))
    drawn = Batching(40, 4, seed=3, paper=True, fixed=False, steps_asked=50)
    assert not all(torch.equal(a, b) for a, b in zip(drawn.batches(0), drawn.batches(1)))
    many = Batching(1010, 10, seed=3, paper=True, fixed=True, steps_asked=500)  # 101 batches an epoch
    assert not all(torch.equal(a, b) for a, b in zip(many.batches(0), many.batches(1)))


# ---- ft's autoencoder: the paper's train_ae.py ---------------------------------------------------------

def paper_train_ae(encoder, decoder, train, test, epochs=500, batch_size=1024, lr=3e-4, patience=10):
    """train_ae.py's loop: the train rows in order, MSE, Adam; the test rows' MSE after each epoch, the
    best epoch's weights kept, stopping after `patience` epochs without a lower one."""
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=lr)
    best, kept, left = float("inf"), None, patience
    for _ in range(epochs):
        for i in range(0, len(train), batch_size):
            batch = train[i:i + batch_size]
            optimizer.zero_grad()
            F.mse_loss(decoder(encoder(batch)), batch).backward()
            optimizer.step()
        with torch.no_grad():
            loss = sum(F.mse_loss(decoder(encoder(test[i:i + batch_size])), test[i:i + batch_size]).item() *
                       len(test[i:i + batch_size]) for i in range(0, len(test), batch_size)) / len(test)
        if loss < best:
            best, kept, left = loss, copy.deepcopy(encoder.state_dict()), patience
        else:
            left -= 1
            if left == 0:
                break
    return kept, best


def test_paper_autoencoder_is_train_ae_py(monkeypatch):
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(1100, 6, generator=g), torch.randn(300, 6, generator=g)  # two train batches
    encoder, decoder = fresh_autoencoder(6, 3)
    expected, expected_mse = paper_train_ae(encoder, decoder, train, test, epochs=60)
    monkeypatch.setattr(aft.prepare, "AE_MAX_ROUNDS", 60)  # the epochs' cap, short for the test
    got, mse = train_autoencoder_paper(train, test, 3, torch.device("cpu"))
    assert mse == pytest.approx(expected_mse, rel=1e-6)
    for k, v in got.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6)


# ---- RKD on SNLI-VE: the teachers side by side ----------------------------------------------------------

def test_rkd_on_snli_ve_takes_the_teachers_side_by_side_under_paper_exact():
    """By default RKD relates the batch in the image (x) text product, as AFT's kernels do; under
    --paper_exact in the teachers' features side by side, as the paper's RKDPrior (which ignores the
    product)."""
    rng = np.random.default_rng(0)
    phi, image, text = rng.normal(size=(9, 5)), rng.normal(size=(9, 3)), rng.normal(size=(9, 4))
    rkd = get_method("rkd")
    reg = rkd(5, [3, 4])
    parts = [torch.tensor(image, dtype=torch.float32), torch.tensor(text, dtype=torch.float32)]
    for paper, psi in ((True, np.concatenate([image, text], 1)),
                       (False, np.einsum("bi,bj->bij", image, text).reshape(9, -1))):
        joined = join_features(parts, rkd.reads_product("image_text", paper))
        got = reg(torch.tensor(phi, dtype=torch.float32), joined).item()
        assert got == pytest.approx(rkd_reference(phi, psi), rel=1e-5), paper
    assert get_method("aft").reads_product("image_text", True)  # AFT keeps the paper's product


# ---- fp32 in one process, the paper's defaults -----------------------------------------------------------

def test_paper_exact_refuses_bf16_and_torchrun():
    with pytest.raises(UserError, match="--paper_exact computes as the paper's code does, in fp32 without TF32: "
                                        "drop --precision=bf16"):
        make_plan(Config(dataset="digits", model_class="resnet10t", method="init", paper_exact=True,
                         precision="bf16"))
    with pytest.raises(UserError, match="run it with python, not torchrun"):
        make_plan(Config(dataset="digits", model_class="resnet10t", method="init", paper_exact=True),
                  World(rank=0, size=2))
    assert make_plan(Config(dataset="digits", model_class="resnet10t", method="init", paper_exact=True,
                            device="cpu")).precision == "fp32"


def test_learn_scales_is_the_papers_default_under_paper_exact():
    def learn_scales(**kw):
        cfg = Config(dataset="digits", model_class="resnet10t", method="aft", pretrained_models="efficientnet_lite2",
                     **kw)
        return make_plan(cfg).settings.learn_scales
    assert learn_scales() is True  # this tool's default
    assert learn_scales(paper_exact=True) is False  # the paper's run.py's
    assert learn_scales(paper_exact=True, method_args={"learn_scales": True}) is True  # as given


def test_hugging_face_students_start_pre_trained_under_paper_exact(monkeypatch):
    """The paper's code loads a Hugging Face student's pre-trained weights whatever --init_model says."""
    built = []

    class Built(Exception):
        pass

    def build(spec, num_classes, pretrained):
        built.append(pretrained)
        raise Built
    monkeypatch.setattr(aft.train, "build_classifier", build)
    for paper in (False, True):
        with pytest.raises(Built):
            run(Config(dataset="tweets", model_class="all-MiniLM-L6-v2", method="init", device="cpu",
                       paper_exact=paper, steps=1))
    assert built == [False, True]
