"""The paper's datasets on small fixtures: torchvision sets in torchvision's own on-disk layout
(or, where torchvision checks MD5 sums of the real files, a stand-in class of the same interface),
Hugging Face sets through a stand-in `datasets.load_dataset` returning real `datasets.Dataset`s or a
folder saved with `save_to_disk`. Nothing here downloads: HF_HUB_OFFLINE=1 (conftest) keeps the loaders
from trying, and the stand-ins fail the test if a download is asked for.
"""
import json
import os

import numpy as np
import pytest
import torch

from aft.datasets import DATASETS, load_task
from aft.errors import UserError
from tests.conftest import pixels, visible

PAPER_DATASETS = ["cifar10", "cifar100", "flowers", "pets", "aircraft", "dtd", "food", "imdb", "boolq", "cola",
                  "sst2", "mrpc", "qqp", "qnli", "rte", "wnli", "mnli", "snli-ve"]
SIZES = [(40, 30), (30, 52), (64, 64), (33, 45), (50, 20), (28, 36)]  # (width, height): varied on purpose


def write_jpeg(path, size, seed):
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def write_dtd(root, classes=("banded", "dotted", "zigzagged"), n_train=2, n_test=1):
    """torchvision's DTD layout: dtd/dtd/images/{class}/{name}.jpg and dtd/dtd/labels/{split}1.txt."""
    base = os.path.join(root, "dtd", "dtd")
    os.makedirs(os.path.join(base, "labels"), exist_ok=True)
    lines = {"train": [], "val": [], "test": []}
    k = 0
    for c in classes:
        for split, n in (("train", n_train), ("val", 1), ("test", n_test)):
            for _ in range(n):
                name = f"{c}_{k:04d}.jpg"
                write_jpeg(os.path.join(base, "images", c, name), SIZES[k % len(SIZES)], k)
                lines[split].append(f"{c}/{name}")
                k += 1
    for split, rows in lines.items():
        with open(os.path.join(base, "labels", f"{split}1.txt"), "w") as f:
            f.write("\n".join(rows) + "\n")
    return lines


def write_pets(root):
    """torchvision's OxfordIIITPet layout: images/{Breed_n}.jpg, annotations/{trainval,test}.txt with
    'image_id class_id(1-based) species breed_id' lines."""
    base = os.path.join(root, "oxford-iiit-pet")
    os.makedirs(os.path.join(base, "annotations"), exist_ok=True)
    rows = {"trainval": [("Abyssinian_1", 1), ("beagle_2", 2), ("Abyssinian_3", 1), ("yorkshire_terrier_4", 37)],
            "test": [("beagle_5", 2), ("yorkshire_terrier_6", 37)]}
    for split, items in rows.items():
        with open(os.path.join(base, "annotations", f"{split}.txt"), "w") as f:
            for k, (image_id, label) in enumerate(items):
                f.write(f"{image_id} {label} 1 1\n")
                write_jpeg(os.path.join(base, "images", f"{image_id}.jpg"), SIZES[k % len(SIZES)], k)
    return rows


def write_aircraft(root):
    """torchvision's FGVCAircraft layout: data/images/{id}.jpg, data/variants.txt (one class a line),
    data/images_variant_{split}.txt with 'id variant name' lines (names may hold spaces)."""
    data = os.path.join(root, "fgvc-aircraft-2013b", "data")
    variants = [f"Variant {i}" for i in range(100)]
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "variants.txt"), "w") as f:
        f.write("\n".join(variants) + "\n")
    rows = {"trainval": [("0000001", 0), ("0000002", 99), ("0000003", 5)], "test": [("0000004", 99), ("0000005", 0)],
            "train": [("0000001", 0)], "val": [("0000002", 99)]}
    for split, items in rows.items():
        with open(os.path.join(data, f"images_variant_{split}.txt"), "w") as f:
            for k, (image_id, label) in enumerate(items):
                f.write(f"{image_id} {variants[label]}\n")
                write_jpeg(os.path.join(data, "images", f"{image_id}.jpg"), SIZES[int(image_id) % len(SIZES)], int(image_id))
    return rows


def write_food(root):
    """torchvision's Food101 layout: meta/{train,test}.json {class: ["class/id", ...]}, images/{class}/{id}.jpg."""
    base = os.path.join(root, "food-101")
    meta = {"train": {"apple_pie": ["apple_pie/1", "apple_pie/2"], "waffles": ["waffles/3"]},
            "test": {"apple_pie": ["apple_pie/4"], "waffles": ["waffles/5", "waffles/6"]}}
    os.makedirs(os.path.join(base, "meta"), exist_ok=True)
    for split, classes in meta.items():
        with open(os.path.join(base, "meta", f"{split}.json"), "w") as f:
            json.dump(classes, f)
        for items in classes.values():
            for item in items:
                k = int(item.split("/")[1])
                write_jpeg(os.path.join(base, "images", f"{item}.jpg"), SIZES[k % len(SIZES)], k)
    return meta


def test_every_paper_dataset_is_registered():
    assert set(PAPER_DATASETS) <= set(DATASETS)
    with pytest.raises(UserError, match="valid datasets: .*aircraft.*cifar10.*mnli.*snli-ve.*sst2"):
        load_task("cifar-10")


# ---- torchvision ---------------------------------------------------------------------------------

def _square_ok(task, n_train, n_test, num_classes):
    assert task.modality == "image" and task.num_classes == num_classes
    assert (len(task.train), len(task.test)) == (n_train, n_test)
    for split in (task.train, task.test):
        assert split.inputs.dtype == torch.uint8 and split.inputs.shape[1:] == (3, 256, 256)
        assert split.labels.dtype == torch.long


def test_dtd_from_disk(tmp_path):
    lines = write_dtd(str(tmp_path))
    task = load_task("dtd", str(tmp_path))
    _square_ok(task, 6, 3, 47)
    classes = sorted({r.split("/")[0] for r in lines["train"]})
    assert task.train.labels.tolist() == [classes.index(r.split("/")[0]) for r in lines["train"]]
    assert task.class_names == ["banded", "dotted", "zigzagged"]


def test_pets_from_disk(tmp_path):
    rows = write_pets(str(tmp_path))
    task = load_task("pets", str(tmp_path))
    _square_ok(task, 4, 2, 37)
    assert task.train.labels.tolist() == [label - 1 for _, label in rows["trainval"]]  # the trainval split
    assert task.test.labels.tolist() == [1, 36]


def test_aircraft_from_disk(tmp_path):
    rows = write_aircraft(str(tmp_path))
    task = load_task("aircraft", str(tmp_path))
    _square_ok(task, 3, 2, 100)  # trainval (3 rows), not train (1 row)
    assert task.train.labels.tolist() == [label for _, label in rows["trainval"]]
    assert task.test.labels.tolist() == [99, 0]


def test_food_from_disk(tmp_path):
    write_food(str(tmp_path))
    task = load_task("food", str(tmp_path))
    _square_ok(task, 3, 3, 101)
    assert task.train.labels.tolist() == [0, 0, 1] and task.test.labels.tolist() == [0, 1, 1]


def test_images_are_decoded_once_and_kept(tmp_path, monkeypatch):
    """The second load reads the decoded squares from {data_dir}/aft-decoded instead of the JPEGs."""
    from aft.datasets.decode import Decoding
    write_dtd(str(tmp_path))
    first = load_task("dtd", str(tmp_path))
    assert visible(tmp_path / "aft-decoded") == ["dtd-test-256px.json", "dtd-test-256px.u8", "dtd-train-256px.json",
                                                "dtd-train-256px.u8"]

    def no_decoding(*a, **k):
        raise AssertionError("decoded again")
    monkeypatch.setattr(Decoding, "__call__", no_decoding)
    again = load_task("dtd", str(tmp_path))
    assert torch.equal(pixels(again.train.inputs), pixels(first.train.inputs)) and torch.equal(again.test.labels, first.test.labels)


def test_square_is_the_central_crop_of_the_resized_image():
    """Shorter side to 256, then the central square: a wide picture whose central square is white and
    whose sides are black comes out white (but for a pixel of resampling at the border)."""
    from PIL import Image
    from aft.datasets.decode import square_uint8
    pixels = np.zeros((100, 300, 3), dtype=np.uint8)
    pixels[:, 100:200] = 255
    out = square_uint8(Image.fromarray(pixels), 256)
    assert out.shape == (3, 256, 256) and out.dtype == torch.uint8
    assert out[:, :, 3:-3].float().mean() > 254 and out.float().mean() > 250
    tall = square_uint8(Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 0, 2))), 256)
    assert tall[:, 3:-3, :].float().mean() > 254


class _FakeCIFAR:
    """torchvision's CIFAR interface (data: N x 32 x 32 x 3 uint8, targets, classes); the real class
    checks the MD5 sums of the real files, so a fixture cannot stand in for them on disk."""
    n_classes = 10

    def __init__(self, root, train=True, download=False, transform=None):
        assert download is False, "a test must never download"
        n = 20 if train else 10
        rng = np.random.default_rng(0 if train else 1)
        self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % self.n_classes for i in range(n)]
        self.classes = [f"c{i}" for i in range(self.n_classes)]


class _FakeCIFAR100(_FakeCIFAR):
    n_classes = 100


@pytest.mark.parametrize("name, cls, num_classes", [("cifar10", "CIFAR10", 10), ("cifar100", "CIFAR100", 100)])
def test_cifar_keeps_its_arrays(monkeypatch, tmp_path, name, cls, num_classes):
    import torchvision
    fake = _FakeCIFAR if num_classes == 10 else _FakeCIFAR100
    monkeypatch.setattr(torchvision.datasets, cls, fake)
    task = load_task(name, str(tmp_path))
    assert task.num_classes == num_classes and (len(task.train), len(task.test)) == (20, 10)
    ref = fake(str(tmp_path), train=True)
    assert torch.equal(task.train.inputs, torch.from_numpy(ref.data).permute(0, 3, 1, 2))  # 32 px, N x C x H x W
    assert task.train.labels.tolist() == ref.targets


def test_flowers_through_torchvision_interface(monkeypatch, tmp_path):
    """Flowers102 (MD5-checked on disk, so a stand-in class): train/test splits, 102 classes, images of
    varied size as the set returns them, made square."""
    import torchvision
    from PIL import Image
    calls = []

    class FakeFlowers:
        def __init__(self, root, split="train", download=False, transform=None):
            assert download is False
            calls.append(split)
            self.split, self.transform = split, transform
            self.n = 5 if split == "train" else 3

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            w, h = SIZES[i]
            img = Image.fromarray(np.full((h, w, 3), 10 * i, dtype=np.uint8))
            return (self.transform(img) if self.transform is not None else img), 101 - i  # as torchvision's

    monkeypatch.setattr(torchvision.datasets, "Flowers102", FakeFlowers)
    task = load_task("flowers", str(tmp_path))
    assert calls == ["train", "test"] and task.num_classes == 102
    _square_ok(task, 5, 3, 102)
    assert task.train.labels.tolist() == [101, 100, 99, 98, 97]
    assert pixels(task.train.inputs)[2].float().mean() == 20  # a flat picture stays flat


@pytest.mark.parametrize("name, folder", [("pets", "oxford-iiit-pet"), ("food", "food-101"), ("cifar10", "cifar-10-batches-py"),
                                          ("flowers", "flowers-102"), ("aircraft", "fgvc-aircraft-2013b")])
def test_missing_torchvision_set_is_one_line(tmp_path, name, folder):
    with pytest.raises(UserError) as err:
        load_task(name, str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and os.path.join(str(tmp_path), folder) in message
    assert "download=True" in message and "--data_dir" in message and "HF_HUB_OFFLINE=1" in message
    assert not os.listdir(tmp_path)  # nothing was downloaded


# ---- Hugging Face text ---------------------------------------------------------------------------

# (name, hub repo and config, splits, columns of one row, label, the exact input text, truncation side,
# classes, step multiplier); the texts are the paper code's formats, written out.
TEXT_CASES = [
    ("imdb", ("stanfordnlp/imdb", None), ("train", "test"), {"text": "Great film."}, 1,
     "Great film.Overall, the sentiment of my review is", "left", 2, 1),
    ("boolq", ("aps/super_glue", "boolq"), ("train", "validation"), {"question": "is it?", "passage": "It is.", "idx": 0},
     1, "Question: is it?\nReference: It is.\nAnswer: ", "left", 2, 1),
    ("mnli", ("nyu-mll/glue", "mnli"), ("train", "validation_matched"), {"premise": "A man.", "hypothesis": "A person.", "idx": 0},
     2, "Premise: A man.\nHypothesis: A person.\nDoes the premise entail the hypothesis? Answer: ", "left", 3, 4),
    ("mrpc", ("nyu-mll/glue", "mrpc"), ("train", "validation"), {"sentence1": "One.", "sentence2": "Two.", "idx": 0},
     0, "Sentence 1: One.\nSentence 2: Two.\nIs Sentence 1 equivalent to Sentence 2? Answer: ", "left", 2, 1),
    ("sst2", ("nyu-mll/glue", "sst2"), ("train", "validation"), {"sentence": "it is fine", "idx": 0},
     1, 'Review: "it is fine"\nSentiment: ', "left", 2, 1),
    ("cola", ("nyu-mll/glue", "cola"), ("train", "validation"), {"sentence": "Him went.", "idx": 0},
     0, 'Is the sentence "Him went." grammatical? Answer: ', "left", 2, 1),
    ("qnli", ("nyu-mll/glue", "qnli"), ("train", "validation"), {"question": "Who?", "sentence": "Me.", "idx": 0},
     1, "Question: Who?\nSentence: Me.\nDoes the sentence answer the question? Answer: ", "right", 2, 4),
    ("rte", ("nyu-mll/glue", "rte"), ("train", "validation"), {"sentence1": "A.", "sentence2": "B.", "idx": 0},
     1, "Sentence 1: A.\nSentence 2: B.\nDoes Sentence 1 entail Sentence 2? Answer: ", "left", 2, 1),
    ("wnli", ("nyu-mll/glue", "wnli"), ("train", "validation"), {"sentence1": "A.", "sentence2": "B.", "idx": 0},
     0, "Sentence 1: A.\nSentence 2: B.\nDoes Sentence 1 entail Sentence 2? Answer: ", "left", 2, 1),
    ("qqp", ("nyu-mll/glue", "qqp"), ("train", "validation"), {"question1": "Why?", "question2": "How?", "idx": 0},
     1, "Question 1: Why?\nQuestion 2: How?\nAre Question 1 and Question 2 equivalent? Answer: ", "left", 2, 4),
]


def _hf_rows(row, label, n, num_classes):
    import datasets
    columns = {k: [v if k != "idx" else i for i in range(n)] for k, v in row.items()}
    columns["label"] = [label] + [i % num_classes for i in range(1, n)]
    features = datasets.Features({**{k: datasets.Value("int32" if k == "idx" else "string") for k in row},
                                  "label": datasets.ClassLabel(num_classes=num_classes)})
    return datasets.Dataset.from_dict(columns, features=features)


@pytest.mark.parametrize("name, source, splits, row, label, text, side, num_classes, mult", TEXT_CASES,
                         ids=[c[0] for c in TEXT_CASES])
def test_text_dataset_splits_prompt_and_truncation(monkeypatch, tmp_path, name, source, splits, row, label, text,
                                                  side, num_classes, mult):
    import datasets
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return _hf_rows(row, label, 6 if split == "train" else 4, num_classes)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = load_task(name, str(tmp_path))
    assert calls == [(*source, splits[0]), (*source, splits[1])]
    assert task.modality == "text" and task.num_classes == num_classes
    assert (len(task.train), len(task.test)) == (6, 4)
    assert task.train.inputs[0] == text and task.test.inputs[0] == text
    assert task.train.labels.tolist() == [label] + [i % num_classes for i in range(1, 6)]
    assert task.truncation_side == side and task.step_multiplier == mult


def test_text_dataset_from_a_saved_folder(monkeypatch, tmp_path):
    """A DatasetDict saved with save_to_disk at {data_dir}/{name} is used without the hub."""
    import datasets

    def no_hub(*a, **k):
        raise AssertionError("the hub was asked")
    dd = datasets.DatasetDict({"train": _hf_rows({"sentence1": "A.", "sentence2": "B.", "idx": 0}, 1, 5, 2),
                               "validation": _hf_rows({"sentence1": "C.", "sentence2": "D.", "idx": 0}, 0, 3, 2)})
    dd.save_to_disk(str(tmp_path / "rte"))
    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    task = load_task("rte", str(tmp_path))
    assert (len(task.train), len(task.test)) == (5, 3)
    assert task.test.inputs[0] == "Sentence 1: C.\nSentence 2: D.\nDoes Sentence 1 entail Sentence 2? Answer: "


def test_missing_hf_dataset_is_one_line(tmp_path):
    with pytest.raises(UserError) as err:
        load_task("mrpc", str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and "nyu-mll/glue" in message and "load_dataset('nyu-mll/glue', 'mrpc')" in message
    assert str(tmp_path / "mrpc") in message and "HF_DATASETS_CACHE" in message


def test_tokenizer_gets_the_truncation_side():
    from aft.inputs import TextInputs
    from aft.models import load_tokenizer, minilm_path
    text = "one two three four five six"
    left = TextInputs([text], load_tokenizer(minilm_path()), max_length=4, truncation_side="left")
    right = TextInputs([text], load_tokenizer(minilm_path()), max_length=4, truncation_side="right")
    tok = load_tokenizer(minilm_path())
    assert tok.decode(left.ids[0, 1:3].tolist()) == "five six" and tok.decode(right.ids[0, 1:3].tolist()) == "one two"


# ---- SNLI-VE ---------------------------------------------------------------------------------------

def write_snli_ve(root):
    """SNLI-VE in the hub copies' columns (image, filename, premise, hypothesis, label), saved with
    save_to_disk as {root}/snli-ve; pictures are shared by several hypotheses, as in the real set."""
    import datasets
    from PIL import Image
    features = datasets.Features({"image": datasets.Image(), "filename": datasets.Value("string"),
                                  "premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])})

    def picture(k):
        w, h = SIZES[k]
        return Image.fromarray(np.full((h, w, 3), 40 * k, dtype=np.uint8))

    def rows(spec):
        return {"image": [picture(k) for k, _ in spec], "filename": [f"{k}.jpg" for k, _ in spec],
                "premise": ["p"] * len(spec), "hypothesis": [h for _, h in spec],
                "label": [i % 3 for i in range(len(spec))]}
    train = [(0, "A dog runs."), (1, "A cat sleeps."), (0, "An animal moves."), (2, "Nobody is here."), (1, "A pet.")]
    test = [(3, "Two people."), (3, "A crowd."), (4, "A car.")]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows(train), features=features),
                          "test": datasets.Dataset.from_dict(rows(test), features=features)}).save_to_disk(
        os.path.join(root, "snli-ve"))
    return train, test


def test_snli_ve_pictures_once_with_their_hypotheses(tmp_path):
    from aft.inputs import ImageText
    train, test = write_snli_ve(str(tmp_path))
    task = load_task("snli-ve", str(tmp_path))
    assert task.modality == "image_text" and task.num_classes == 3
    assert task.class_names == ["entailment", "neutral", "contradiction"]
    assert isinstance(task.train.inputs, ImageText) and (len(task.train), len(task.test)) == (5, 3)
    assert task.train.inputs.texts == [h for _, h in train] and task.train.labels.tolist() == [0, 1, 2, 0, 1]
    assert task.train.inputs.images.shape == (3, 3, 256, 256)  # 3 distinct pictures for 5 rows
    assert task.train.inputs.index.tolist() == [0, 1, 0, 2, 1]
    assert [int(pixels(task.train.inputs.images)[p].float().mean()) for p in range(3)] == [0, 40, 80]
    sub = task.train.subset(torch.tensor([3, 0]))
    assert sub.inputs.texts == ["Nobody is here.", "A dog runs."] and sub.labels.tolist() == [0, 0]
    assert sub.inputs.index.tolist() == [2, 0]


def test_snli_ve_feeds_image_text_and_pair_models(tmp_path):
    """An image model reads SNLI-VE's pictures, a text model its hypotheses (as the paper's
    pre-trained models did); CLIP takes both."""
    from aft.models import resolve_model
    write_snli_ve(str(tmp_path))
    task = load_task("snli-ve", str(tmp_path))
    image = resolve_model("resnet10t")
    assert image.accepts(task.modality)
    x = image.make_inputs(task.train.inputs, task, 32).batch(torch.tensor([0, 2, 3]))
    assert x.shape == (3, 3, 32, 32) and torch.equal(x[0], x[1])  # rows 0 and 2 share a picture
    text = resolve_model("tiny_bert")
    ids = text.make_inputs(task.train.inputs, task)
    assert len(ids) == 5 and ids.lengths[0] == len(text.make_inputs(["A dog runs."], task).ids[0])
    assert not resolve_model("tiny_bert").accepts("image") and not image.accepts("text")


# ---- the decode size: the side the downstream model resizes pictures to ---------------------------------

def test_pictures_are_decoded_at_the_side_the_downstream_model_needs(monkeypatch):
    """A run's pictures are decoded at its downstream model's input size / crop fraction, whatever its
    teachers (one whose features are computed decodes them at its own side); a linear probe's at its
    first teacher whose cache is missing; AFT_IMAGE_SIZE overrides it; a run that reads no pictures
    gets the default."""
    from aft.config import Config
    from aft.datasets.decode import DEFAULT_DECODE_SIZE
    from aft.plan import make_plan
    monkeypatch.delenv("AFT_IMAGE_SIZE", raising=False)

    def side(method="aft", dataset="flowers", **kw):
        return make_plan(Config(dataset=dataset, features_dir="/nonexistent", method=method, **kw)).decode_size

    vit_s, dinov2_g = "vit_small_patch16_224.augreg_in1k", "vit_giant_patch14_dinov2.lvd142m"
    assert side(model_class=vit_s, pretrained_models="", method="init") == 248  # 224 / 0.9
    assert side(model_class=vit_s, pretrained_models=dinov2_g) == 248  # not DINOv2's 518: it decodes its own
    assert side(model_class=vit_s, image_size=112, pretrained_models="", method="init") == 124
    assert side(method="linear_probe", pretrained_models=dinov2_g, teacher_image_size=224) == 224
    assert side(dataset="tweets", model_class="tiny_bert", pretrained_models="all-MiniLM-L6-v2") == DEFAULT_DECODE_SIZE
    monkeypatch.setenv("AFT_IMAGE_SIZE", "300")
    assert side(model_class=vit_s, pretrained_models=dinov2_g) == 300
    monkeypatch.setenv("AFT_IMAGE_SIZE", "big")
    with pytest.raises(UserError, match="AFT_IMAGE_SIZE=big must be a whole number of pixels > 0"):
        side(model_class=vit_s, pretrained_models=dinov2_g)


def test_each_decode_size_has_its_own_decoded_file(tmp_path, monkeypatch):
    """Decoded at 48 px, then at 64: two files, squares of each size, the 48-px one reused as it is."""
    monkeypatch.delenv("AFT_IMAGE_SIZE", raising=False)
    write_dtd(str(tmp_path))
    small = load_task("dtd", str(tmp_path), 48)
    large = load_task("dtd", str(tmp_path), 64)
    assert small.train.inputs.shape[-2:] == (48, 48) and large.train.inputs.shape[-2:] == (64, 64)
    assert (small.decoded_size, large.decoded_size) == (48, 64)
    assert visible(tmp_path / "aft-decoded") == [f"dtd-{split}-{size}px.{ext}" for split in ("test", "train")
                                                 for size in (48, 64) for ext in ("json", "u8")]
    assert torch.equal(pixels(load_task("dtd", str(tmp_path), 48).train.inputs), pixels(small.train.inputs))
