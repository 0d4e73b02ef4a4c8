"""Embedded datasets, split helpers and preprocessed inputs."""
import pytest
import torch

from aft.datasets import DATASETS, load_task, train_eval_indices
from aft.errors import UserError
from aft.inputs import ImageInputs, TextInputs
from aft.models import load_tokenizer, minilm_path


def test_digits_split():
    task = load_task("digits")
    assert (len(task.train), len(task.test), task.num_classes) == (1437, 360, 10)
    assert task.train.inputs.dtype == torch.uint8 and task.train.inputs.shape[1:] == (1, 8, 8)
    assert task.train.inputs.max() == 255 and set(task.test.labels.tolist()) == set(range(10))


def test_tweets_split_is_fixed_and_disjoint():
    task = load_task("tweets")
    assert len(task.train) + len(task.test) == 38158 and task.num_classes == 3
    assert 0.18 < len(task.test) / 38158 < 0.22
    assert not set(task.train.inputs) & set(task.test.inputs)  # duplicated tweets stay on one side
    again = load_task("tweets")
    assert again.test.inputs[:50] == task.test.inputs[:50]
    assert torch.equal(again.train.labels, task.train.labels)


def test_fashion_mnist_missing_names_the_package(tmp_path, monkeypatch):
    import aft.datasets.embedded
    monkeypatch.setattr(aft.datasets.embedded, "FASHION_MNIST_DIR", str(tmp_path / "none"))
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load_task("fashion_mnist", str(tmp_path))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UserError, match="valid datasets: .*digits.*tweets"):
        load_task("imagenet-99")
    assert {"digits", "fashion_mnist", "tweets"} <= set(DATASETS)


def test_train_eval_indices():
    train, val = train_eval_indices(1000, 1.0, True)
    assert len(val) == 100 and len(train) == 900 and not set(train.tolist()) & set(val.tolist())
    train2, val2 = train_eval_indices(1000, 1.0, True)
    assert torch.equal(val, val2)  # the fixed split seed 42
    half, none = train_eval_indices(1000, 0.5, False)
    assert len(half) == 500 and none is None
    with pytest.raises(UserError, match=r"\(0, 1\]"):
        train_eval_indices(1000, 1.5, False)


@pytest.mark.parametrize("n, train_frac, use_val", [(1000, 0.5, True), (1437, 1.0, True), (1437, 0.05, False),
                                                    (31, 0.33, True), (38158, 0.25, True)])
def test_rows_are_the_papers(n, train_frac, use_val):
    """The paper's code: split_train = random_split(train set, [min(train_frac, 1 - val_frac), val_frac,
    rest], generator seeded 42), val_frac = 0.1 with use_val. Same rows here (in dataset order), so
    --train_frac=0.5 --use_val=True trains on half the set, not on half of the other 90%."""
    import warnings
    val_frac = 0.1 if use_val else 0.0
    fracs = [min(train_frac, 1 - val_frac), val_frac]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random_split warns about the empty "rest" share
        ref_train, ref_val, _ = torch.utils.data.random_split(range(n), fracs + [1 - sum(fracs)],
                                                              generator=torch.Generator().manual_seed(42))
    train, val = train_eval_indices(n, train_frac, use_val)
    assert train.tolist() == sorted(ref_train.indices)
    assert (val is None) == (not use_val) and (val is None or val.tolist() == sorted(ref_val.indices))
    if train_frac <= 0.9:
        assert abs(len(train) - train_frac * n) <= 1


def test_text_inputs_cut_each_batch_to_its_longest():
    tok = load_tokenizer(minilm_path())
    texts = ["a", "a b c d e f g", "hello world"]
    inputs = TextInputs(texts, tok)
    assert inputs.lengths.tolist() == [len(tok(t)["input_ids"]) for t in texts]
    idx = torch.tensor([0, 2])
    (width,) = inputs.widths([idx])
    batch = inputs.batch(idx, width)
    assert batch["input_ids"].shape == (2, width) == (2, int(inputs.lengths[2]))
    assert batch["attention_mask"].sum(1).tolist() == inputs.lengths[idx].tolist()
    assert batch["input_ids"][1].tolist() == tok("hello world")["input_ids"]


def test_text_inputs_truncation_side():
    tok = load_tokenizer(minilm_path())
    left = TextInputs(["one two three four five six"], tok, max_length=4, truncation_side="left")
    right = TextInputs(["one two three four five six"], tok, max_length=4, truncation_side="right")
    assert tok.decode(left.ids[0, 1:3].tolist()) == "five six"
    assert tok.decode(right.ids[0, 1:3].tolist()) == "one two"


def test_image_inputs_resize_crop_normalise():
    images = torch.full((5, 1, 8, 8), 255, dtype=torch.uint8)
    inputs = ImageInputs(images, 16, [0.5] * 3, [0.25] * 3, crop_pct=0.8)
    x = inputs.batch(torch.tensor([0, 3]))
    assert x.shape == (2, 3, 16, 16)
    assert torch.allclose(x, torch.full_like(x, 2.0))  # (1 - 0.5) / 0.25
    assert inputs.batch(torch.tensor([1]), augment=True).shape == (1, 3, 16, 16)
