"""Your own data: a folder of pictures, a table of texts and a saved Hugging Face dataset, made here,
through save_features.py, logme.py and run.py; how labels and splits are read; the identity of a
dataset and of a local model folder (however the path is typed, never two under one name, a changed
folder never read from a stale cache); bad rows refused or left out and counted; a decoded set larger
than the process's memory limit; and runs that compute only the feature rows they read."""
import csv
import json
import os
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from aft.config import Config
from aft.datasets import DataOptions, dataset_entry, load_entry
from aft.errors import UserError
from aft.features import feature_path
from aft.plan import make_plan
from tests.conftest import ROOT, pixels
from tests.test_cli import cli
from tests.test_reliability import error_line

CLASSES = ("cat", "dog")


def write_pictures(folder, per_class=(4, 2)):
    """train/ and test/ class folders of PNGs of varying sizes: the digits 0 ("cat") and 1 ("dog") of
    scikit-learn's set, pictures a pre-trained CNN has features of even at 32 px."""
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    for split, n in zip(("train", "test"), per_class):
        for c, name in enumerate(CLASSES):
            os.makedirs(os.path.join(folder, split, name), exist_ok=True)
            images = digits.images[digits.target == c][(split == "test") * 10:]
            for i in range(n):
                picture = Image.fromarray(np.uint8(images[i] * 15)).convert("RGB").resize((12 + i, 12))
                picture.save(os.path.join(folder, split, name, f"{i}.png"))
    return folder


def write_table(path, rows, header=("question", "answer", "label")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def qa_rows(n, labels=("yes", "no")):
    return [(f"question {i}?", f"answer {i}", labels[i % len(labels)]) for i in range(n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One of each form, in one folder."""
    import datasets
    root = tmp_path_factory.mktemp("own")
    write_pictures(str(root / "pics"))
    write_table(str(root / "qa.csv"), qa_rows(20))
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": [f"text {i}" for i in range(12)], "label": [i % 3 for i in range(12)]}),
        "validation": datasets.Dataset.from_dict({"text": ["v0", "v1", "v2"], "label": [0, 1, 2]}),
        "test": datasets.Dataset.from_dict({"text": ["t0", "t1", "t2", "t3"], "label": [2, 1, 0, 1]}),
    }).save_to_disk(str(root / "hf"))
    return root


# ---- each form through each script -----------------------------------------------------------------------

FORMS = {
    "pictures": (["--dataset=pics", "--data_dir=data"], "efficientnet_lite2", ["--image_size=32"],
                 ["--model_class=resnet10t", "--image_size=16", "--teacher_image_size=32"], (8, 4, 2)),
    "table": (["--dataset=qa.csv", "--prompt=Q: {question} A: {answer}"], "all-MiniLM-L6-v2", [],
              ["--model_class=tiny_bert"], (16, 4, 2)),
    "hf": (["--dataset=hf"], "all-MiniLM-L6-v2", [], ["--model_class=tiny_bert", "--use_val=True"], (12, 4, 3)),
}


@pytest.mark.slow
@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_form_through_every_script(data, form):
    """save_features.py caches the features under the data's own name, logme.py scores them, run.py
    trains AFT with them; the results record the dataset's name, classes and fingerprint."""
    flags, teacher, extract, student, (n_train, n_test, n_classes) = FORMS[form]
    out = cli("save_features.py", f"--model_class={teacher}", *flags, *extract, cwd=data)
    entry = dataset_entry(str(data / flags[0].split("=", 1)[1]),
                          DataOptions(prompt="Q: {question} A: {answer}") if form == "table" else DataOptions())
    path = os.path.join("./features", f"{teacher}_{entry.name}.pt")
    assert f"saved {path}: train {n_train} x" in out.stdout
    cache = torch.load(data / path, weights_only=True)
    assert cache["meta"]["data_fingerprint"] == entry.fingerprint and len(cache["meta"]["classes"]) == n_classes
    out = cli("logme.py", f"--model_class={teacher}", *flags, *(["--use_val=True"] if form == "hf" else []), cwd=data)
    assert f"LogME of {teacher} on {entry.name} ({n_train} train rows)" in out.stdout
    out = cli("run.py", *flags, *student, f"--pretrained_models={teacher}", "--steps=2", "--eval_steps=2",
              "--batch_size=4", f"--run_name={form}", cwd=data)
    assert "computing them now" not in out.stdout  # the cache save_features.py made is read
    record = json.load(open(data / "results" / f"{form}.json"))
    assert record["dataset"] == entry.name and len(record["classes"]) == n_classes
    assert record["identity"]["data_fingerprint"] == entry.fingerprint
    assert record["n_train"] == n_train and record["n_eval"] == (3 if form == "hf" else n_test)  # hf: its validation
    assert record["evals"][-1]["reg"] > 0


# ---- labels and splits ------------------------------------------------------------------------------------

def test_labels_are_sorted_values_and_splits_are_read(data, tmp_path):
    task = load_entry(dataset_entry(str(data / "pics")), str(tmp_path), 16)
    assert task.class_names == ["cat", "dog"] and task.train.labels.tolist() == [0] * 4 + [1] * 4
    assert pixels(task.train.inputs).shape == (8, 3, 16, 16) and task.val is None
    numbers = write_table(str(tmp_path / "n.csv"), [(f"q{i}", "a", str(label)) for i, label in
                                                    enumerate([10, 2, 10, 2, 3] * 4)])
    task = load_entry(dataset_entry(numbers, DataOptions(text_columns="question")))
    assert task.class_names == ["2", "3", "10"]  # integers numerically, not as strings
    assert len(task.train) + len(task.test) == 20 and len(task.test) == 5  # round(0.2 n) of each class: 2 + 2 + 1
    hf = load_entry(dataset_entry(str(data / "hf")))
    assert hf.val is not None and len(hf.val) == 3 and hf.train.inputs[0] == "text 0"
    # only class folders: split by the seeded fraction, within each class
    pool = tmp_path / "pool"
    for name in CLASSES:
        shutil.copytree(data / "pics" / "train" / name, pool / name)
    task = load_entry(dataset_entry(str(pool), DataOptions(test_frac=0.5, split_seed=1)), str(tmp_path), 16)
    assert (len(task.train), len(task.test)) == (4, 4) and task.test.labels.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("rows, message", [
    ([("q1", "a", "yes"), ("q2", "a", "yes")], "has one class only (yes) in its train split"),
    ([("q1", "a", "yes"), ("q2", "a", "no"), ("q3", "a", "")],
     "1 rows cannot be used: qa.csv line 4 (no label); fix or remove them, or pass --skip_bad_rows=True"),
    ([("q1", "a", "yes"), ("", "", "no"), ("q3", "a", "no")], "1 rows cannot be used: qa.csv line 3 (empty text)"),
])
def test_bad_table_rows_are_one_line_before_any_work(tmp_path, rows, message):
    path = write_table(str(tmp_path / "qa.csv"), rows * 3 if "one class" in message else rows)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_plan(Config(dataset=path, model_class="tiny_bert", method="init", pretrained_models="",
                         data=DataOptions(text_columns="question,answer", test_frac=0.5)))


def test_a_test_label_never_seen_in_training_names_the_row(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    write_table(str(folder / "train.csv"), qa_rows(4))
    write_table(str(folder / "test.csv"), qa_rows(2) + [("q", "a", "maybe")])
    line = error_line(cli("run.py", f"--dataset={folder}", "--text_columns=question", "--method=init", cwd=tmp_path,
                          check=False))
    assert "test label 'maybe' (test.csv line 4) is not among the train split's labels (no, yes)" in line
    assert not os.path.exists(tmp_path / "results")


@pytest.mark.slow
def test_unreadable_pictures_are_refused_or_left_out_and_counted(tmp_path):
    pics = write_pictures(str(tmp_path / "pics"))
    for name in ("broken.png", "empty.jpg"):
        with open(os.path.join(pics, "train", "dog", name), "w") as f:
            f.write("not a picture" if name == "broken.png" else "")
    run = ["--dataset=pics", "--model_class=resnet10t", "--image_size=16", "--method=init", "--steps=2",
           "--eval_steps=2", "--batch_size=4", "--run_name=r", "--data_dir=data"]
    line = error_line(cli("run.py", *run, cwd=tmp_path, check=False))
    assert "dataset pics: 2 pictures cannot be read: train/dog/broken.png (cannot identify image file" in line
    assert "train/dog/empty.jpg" in line and line.endswith("or pass --skip_bad_rows=True to leave them out")
    out = cli("run.py", *run, "--skip_bad_rows=True", cwd=tmp_path)
    assert "left out 2 pictures of pics that cannot be read" in out.stdout
    record = json.load(open(tmp_path / "results" / "r.json"))
    assert record["skipped_rows"] == 2 and record["n_train"] == 8


# ---- identity ---------------------------------------------------------------------------------------------

def test_a_dataset_is_named_by_what_it_is(data, tmp_path, monkeypatch):
    """One folder typed three ways is one dataset (one cache, one run name); two folders of one name are
    two; a changed folder keeps its name but not its fingerprint, so its old cache is refused and its
    runs are new."""
    monkeypatch.chdir(data)
    names = {dataset_entry(path).name for path in (str(data / "pics"), "pics/", f"../{data.name}/pics")}
    assert len(names) == 1 and names.pop().startswith("pics-")
    other = write_pictures(str(tmp_path / "pics"))
    assert dataset_entry(other).name != dataset_entry("pics").name
    cfg = dict(model_class="resnet10t", image_size=16, method="init", pretrained_models="")
    before = make_plan(Config(dataset=other, **cfg))
    assert before.run_name.startswith(f"{dataset_entry(other).name}_resnet10t_init")
    assert before.run_name == make_plan(Config(dataset=other + "/", **cfg)).run_name
    os.remove(os.path.join(other, "test", "cat", "0.png"))
    after = make_plan(Config(dataset=other, **cfg))
    assert after.dataset.name == before.dataset.name and after.dataset.fingerprint != before.dataset.fingerprint
    assert after.run_name != before.run_name


@pytest.mark.slow
def test_a_cache_of_changed_files_is_refused(data, tmp_path):
    folder = tmp_path / "qa"
    folder.mkdir()
    write_table(str(folder / "train.csv"), qa_rows(6))
    write_table(str(folder / "test.csv"), qa_rows(2))
    run = [f"--dataset={folder}", "--text_columns=question", "--pretrained_models=all-MiniLM-L6-v2", "--steps=1",
           "--eval_steps=1", "--batch_size=2"]
    cli("run.py", *run, cwd=tmp_path)
    write_table(str(folder / "test.csv"), qa_rows(3))
    line = error_line(cli("run.py", *run, cwd=tmp_path, check=False))
    assert "holds features of qa-" in line and "files as they were at" in line and "they have changed since" in line
    assert f"create it again with: python save_features.py --model_class=all-MiniLM-L6-v2 --dataset={folder} " \
           f"--text_columns=question --save_path=" in line


def test_a_local_model_folder_typed_two_ways_is_one_model(tmp_path, monkeypatch):
    """A cache made for ./models/m is read for models/m/ (and its absolute path); a folder of the same
    name elsewhere has its own file."""
    from aft.features import make_meta, read_features, write_features
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "elsewhere" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    path = feature_path("features", "./models/m", "digits")
    train, test = torch.randn(4, 2), torch.randn(2, 2)
    write_features(path, train, test, make_meta("./models/m", "digits", train, test))
    for typed in ("models/m/", str(tmp_path / "models" / "m")):
        assert feature_path("features", typed, "digits") == path
        assert torch.equal(read_features(path, typed, "digits")["train"], train)
    assert feature_path("features", "elsewhere/m", "digits") != path


# ---- only the rows a run reads ----------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_computes_only_its_rows_and_the_next_adds_what_is_missing(tmp_path):
    write_table(str(tmp_path / "qa.csv"), qa_rows(40))
    run = ["--dataset=qa.csv", "--text_columns=question", "--pretrained_models=all-MiniLM-L6-v2", "--steps=1",
           "--eval_steps=1", "--batch_size=2"]
    out = cli("run.py", *run, "--train_frac=0.25", cwd=tmp_path)
    assert "features ./features/all-MiniLM-L6-v2_qa-" in out.stdout and "not found: computing them now" in out.stdout
    name = dataset_entry(str(tmp_path / "qa.csv"), DataOptions(text_columns="question")).name
    cache = torch.load(tmp_path / "features" / f"all-MiniLM-L6-v2_{name}.pt", weights_only=True)
    assert int(cache["present"]["train"].sum()) == 8 and int(cache["present"]["test"].sum()) == 0  # 25% of 32
    out = cli("run.py", *run, "--train_frac=0.5", cwd=tmp_path)
    assert "lack 8 rows this run reads: computing them now" in out.stdout
    extended = torch.load(tmp_path / "features" / f"all-MiniLM-L6-v2_{name}.pt", weights_only=True)
    assert int(extended["present"]["train"].sum()) == 16
    kept = cache["present"]["train"]
    assert torch.equal(extended["train"][kept], cache["train"][kept])  # the first run's rows, as they were
    cli("save_features.py", "--model_class=all-MiniLM-L6-v2", "--dataset=qa.csv", "--text_columns=question",
        cwd=tmp_path)
    whole = torch.load(tmp_path / "features" / f"all-MiniLM-L6-v2_{name}.pt", weights_only=True)
    assert "present" not in whole
    torch.testing.assert_close(whole["train"][kept], cache["train"][kept])


# ---- larger than memory -----------------------------------------------------------------------------------

LIMIT = 1536 << 20  # bytes of data segment the process may use (RLIMIT_DATA); torch on a CPU needs 1.1-1.5 GiB


@pytest.mark.slow
def test_a_set_larger_than_the_memory_limit_extracts_and_trains(tmp_path):
    """5,600 pictures decoded at 320 px are 1.60 GiB on disk, more than the process may hold at all
    (RLIMIT_DATA 1.5 GiB): extracted and trained on, read a batch at a time."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", 4600), ("test", 1000)):
        for c in CLASSES:
            os.makedirs(tmp_path / "big" / split / c)
            for i in range(n // 2):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)).save(
                    tmp_path / "big" / split / c / f"{i}.png")

    def limited():
        resource.setrlimit(resource.RLIMIT_DATA, (LIMIT, LIMIT))

    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", AFT_IMAGE_SIZE="320")
    run = [sys.executable, os.path.join(ROOT, "run.py"), "--dataset=big", "--data_dir=data", "--model_class=resnet10t",
           "--image_size=16", "--pretrained_models=efficientnet_lite2", "--teacher_image_size=16", "--steps=4",
           "--eval_steps=4", "--batch_size=8", "--extract_batch_size=64", "--eval_batch_size=64", "--run_name=r"]
    out = subprocess.run(run, cwd=tmp_path, env=env, preexec_fn=limited, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pictures: 4600 at 320 px (1.32 GiB) read from disk a batch at a time" in out.stdout
    stores = [f for f in os.listdir(tmp_path / "data" / "aft-decoded") if f.endswith(".u8")]
    assert sum(os.path.getsize(tmp_path / "data" / "aft-decoded" / f) for f in stores) == 5600 * 3 * 320 * 320 > LIMIT
    assert json.load(open(tmp_path / "results" / "r.json"))["n_train"] == 4600


def test_a_store_read_longer_than_one_read_returns_is_read_whole(tmp_path, monkeypatch):
    """Linux returns at most 2 GiB from one read: a run of rows longer than a read gives is read in several
    (here each read gives 100 bytes); a file that ends early is still refused as truncated."""
    import aft.store
    from aft.store import DiskImages
    pictures = torch.randint(0, 256, (6, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    path = tmp_path / "p.u8"
    path.write_bytes(pictures.numpy().tobytes())
    real = os.preadv
    monkeypatch.setattr(aft.store.os, "preadv", lambda fd, buffers, offset: real(fd, [buffers[0][:100]], offset))
    images = DiskImages(str(path), 6, 3, 8)
    assert torch.equal(images.load(), pictures)
    assert torch.equal(images[torch.tensor([4, 0, 1, 2])].load(), pictures[[4, 0, 1, 2]])
    path.write_bytes(pictures.numpy().tobytes()[:-10])
    with pytest.raises(UserError, match="is shorter than its 6 rows"):
        images.load()
