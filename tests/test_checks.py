"""Checks made before work: models that cannot read the dataset, too few training rows, images
enlarged far beyond their size, teacher caches made at another image size, an unreachable hub;
and error quotes cut at a word."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

import aft.teachers
from aft.config import Config
from aft.datasets import DATASETS, check_train_rows, dataset_entry, load_task, train_eval_indices
from aft.errors import UserError, first_line
from aft.features import feature_path, make_meta, read_features, write_features
from aft.plan import make_plan
from tests.test_cli import cli
from tests.test_reliability import error_line

DIGITS_RUN = ["--dataset=digits", "--model_class=resnet10t", "--image_size=16", "--method=init", "--steps=1",
              "--eval_steps=1", "--batch_size=32"]


def no_extraction(*args, **kwargs):
    raise AssertionError("features were extracted")


# ---- modality: refused before any data, model or feature file loads ---------------------------------

def test_image_student_on_a_text_dataset_fails_before_anything_loads(tmp_path, monkeypatch):
    """The default run (tweets, MiniLM teacher, no cache yet) with an image student: the modality line,
    before the tweets load or MiniLM's features are computed (minutes, in vain)."""
    import aft.experiment

    def no_loading(*args, **kwargs):
        raise AssertionError("the dataset was loaded")

    monkeypatch.setattr(aft.experiment, "load_entry", no_loading)
    monkeypatch.setattr(aft.teachers, "extract_to_cache", no_extraction)
    cfg = Config(model_class="resnet10t", features_dir=str(tmp_path / "features"), out_dir=str(tmp_path / "results"))
    with pytest.raises(UserError) as e:
        aft.experiment.run(cfg)
    assert str(e.value) == "model resnet10t takes image but dataset tweets is text"
    assert not os.path.exists(tmp_path / "features") and not os.path.exists(tmp_path / "results")
    # A linear probe has no downstream model: only its teachers are checked.
    cfg.method = "linear_probe"
    make_plan(cfg)


def test_image_teacher_on_a_text_dataset_fails_before_anything_loads(tmp_path):
    proc = cli("run.py", "--pretrained_models=efficientnet_lite2", "--features_dir=feats", cwd=tmp_path, check=False)
    assert error_line(proc) == "error: model efficientnet_lite2 takes image but dataset tweets is text"
    assert "computing them now" not in proc.stdout
    assert not os.path.exists(tmp_path / "feats") and not os.path.exists(tmp_path / "results")


def test_a_cached_teacher_is_not_resolved_again(tmp_path):
    """A teacher whose cache exists was checked when the cache was made; a name no model has (a cache
    made elsewhere) passes, while the same name without a cache is refused."""
    cfg = Config(dataset="digits", model_class="resnet10t", pretrained_models="made_elsewhere",
                 features_dir=str(tmp_path))
    with pytest.raises(UserError, match="unknown model 'made_elsewhere'"):
        make_plan(cfg)
    train, test = torch.randn(3, 2), torch.randn(2, 2)
    write_features(feature_path(str(tmp_path), "made_elsewhere", "digits"), train, test,
                   make_meta("made_elsewhere", "digits", train, test))
    make_plan(cfg)


def test_the_registry_knows_each_modality_without_loading():
    for name in ("digits", "tweets"):
        assert dataset_entry(name).modality == load_task(name).modality
    assert {DATASETS[n].modality for n in ("cifar10", "flowers", "fashion_mnist")} == {"image"}
    assert {DATASETS[n].modality for n in ("imdb", "sst2", "mnli")} == {"text"}
    assert dataset_entry("snli-ve").modality == "image_text"
    with pytest.raises(UserError, match="unknown dataset 'nope'; valid datasets: .*digits"):
        dataset_entry("nope")


# ---- training rows ---------------------------------------------------------------------------------

def test_too_small_train_frac_names_the_smallest_that_works(tmp_path):
    line = error_line(cli("run.py", *DIGITS_RUN, "--train_frac=0.0001", cwd=tmp_path, check=False))
    prefix = "error: --train_frac=0.0001 leaves 1 training row of dataset digits; at least 10 are needed " \
             "(one per class of its 10): use --train_frac="
    assert line.startswith(prefix) and line.endswith(" or more")
    suggested = line[len(prefix):-len(" or more")]
    # two significant digits: the value one step lower in its second digit gives fewer than 10 rows
    mantissa, exponent = f"{float(suggested):.1e}".split("e")
    lower = float(f"{float(mantissa) - 0.1:.1f}e{exponent}")
    rows = [len(train_eval_indices(1437, frac, False)[0]) for frac in (lower, float(suggested))]
    assert rows[0] < 10 <= rows[1]
    cli("run.py", *DIGITS_RUN, f"--train_frac={suggested}", "--run_name=least", cwd=tmp_path)  # it trains
    assert not os.path.exists(tmp_path / "features")


def test_a_dataset_too_small_for_any_train_frac():
    for use_val, held_out in ((False, ""), (True, " after the validation hold-out (--use_val)")):
        rows = len(train_eval_indices(1, 1.0, use_val)[0])
        with pytest.raises(UserError) as e:
            check_train_rows("tiny", 1, rows, 1.0, use_val)
        assert str(e.value) == f"dataset tiny has too few training rows{held_out} to train on: at least 2 are needed " \
                               f"(a batch of one breaks BatchNorm)"
    check_train_rows("tiny", 2, 2, 1.0, False)  # enough: nothing said


# ---- upscaling warning -----------------------------------------------------------------------------

def test_images_enlarged_more_than_4x_are_warned_about(cfg, capsys):
    """Digits (8 px) at resnet18's own 224 px: one warning naming --image_size; at 16 px (2x) none."""
    from aft.train import Trainer
    task = load_task("digits")
    train_idx, _ = train_eval_indices(len(task.train), 0.05, False)
    cfg.dataset, cfg.model_class, cfg.method = "digits", "resnet18", "init"
    for image_size, warning in ((0, "warning: resnet18 enlarges the 8 px images 28x, to 224 px; a smaller "
                                    "--image_size (e.g. --image_size=32) avoids that\n"), (16, "")):
        cfg.image_size = image_size
        trainer = Trainer(make_plan(cfg), task, train_idx, task.test, None)
        assert trainer.train_inputs.size == (image_size or 224)
        assert capsys.readouterr().err == warning  # a diagnostic: stderr, so stdout stays the tool's output


# ---- teacher caches at the teacher's own image size ------------------------------------------------

def write_teacher_cache(folder, **meta):
    task = load_task("digits")
    train, test = torch.randn(len(task.train), 4), torch.randn(len(task.test), 4)
    path = feature_path(str(folder), "efficientnet_lite2", "digits")
    write_features(path, train, test, make_meta("efficientnet_lite2", "digits", train, test, **meta))
    return path


def teachers_of(folder, **flags):
    from aft.teachers import load_teachers
    task = load_task("digits")
    cfg = Config(dataset="digits", model_class="resnet10t", pretrained_models="efficientnet_lite2",
                 features_dir=str(folder), **flags)
    return load_teachers(make_plan(cfg), task, torch.arange(len(task.train)), None)


def test_cache_made_at_another_size_is_refused_and_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(aft.teachers, "extract_to_cache", no_extraction)
    path = write_teacher_cache(tmp_path, modality="image", image_size=32)
    before = open(path, "rb").read()
    with pytest.raises(UserError) as e:
        teachers_of(tmp_path, image_size=32)  # the student's size is not the teacher's
    assert str(e.value) == (
        f"{path} holds features of images at 32 px, but this run expects the model's own input size "
        f"(--teacher_image_size=0); use it with --teacher_image_size=32, or create it again with: python "
        f"save_features.py --model_class=efficientnet_lite2 --dataset=digits --save_path={path}")
    with pytest.raises(UserError, match=r"expects 24 px \(--teacher_image_size=24\); use it with "
                                        r"--teacher_image_size=32, or create it again with: .* --image_size=24$"):
        teachers_of(tmp_path, teacher_image_size=24)
    assert open(path, "rb").read() == before
    assert teachers_of(tmp_path, teacher_image_size=32).train[0].shape == (1437, 4)  # reused at its own size


def test_old_and_text_caches_are_read_at_the_models_own_size(tmp_path):
    path = write_teacher_cache(tmp_path)  # older caches have no image_size: the model's own
    assert read_features(path, image_size=0)["meta"]["model"] == "efficientnet_lite2"
    with pytest.raises(UserError, match="holds features of images at the model's own input size, but this run "
                                        "expects 16 px"):
        read_features(path, image_size=16)
    path = write_teacher_cache(tmp_path, modality="text", image_size=0)
    read_features(path, image_size=16)  # a text model sees no images


def test_missing_cache_is_computed_at_the_teachers_size_not_the_students(tmp_path, monkeypatch):
    sizes = []

    def record(spec, task, path, batch_size, device, precision="auto", image_size=None, world=None, need=None):
        sizes.append(image_size)
        write_teacher_cache(tmp_path, modality="image", image_size=image_size or 0)

    monkeypatch.setattr(aft.teachers, "extract_to_cache", record)
    teachers_of(tmp_path, image_size=16)
    assert sizes == [None]  # None: the model's own


def test_teacher_image_size_makes_and_checks_that_size(tmp_path, monkeypatch, capsys):
    """EfficientNet-Lite2's features at --teacher_image_size=16 equal those of the digits resized to 16 px
    here (bilinear, then (x - 127) / 128, its training normalisation); the cache says 16 and is read
    back at 16 without computing it again."""
    from aft.models import resolve_model
    teachers = teachers_of(tmp_path, teacher_image_size=16)
    assert "not found: computing them now" in capsys.readouterr().out
    cache = torch.load(feature_path(str(tmp_path), "efficientnet_lite2", "digits"), weights_only=True)
    assert cache["meta"]["image_size"] == 16 and cache["meta"]["modality"] == "image"
    images = load_task("digits").train.inputs[:4].float().expand(-1, 3, -1, -1)
    x = (F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False) - 127) / 128
    body, _ = resolve_model("efficientnet_lite2").build(pretrained=True)
    with torch.no_grad():
        expected = body.eval()(x)
    assert torch.allclose(teachers.train[0][:4], expected, atol=1e-4, rtol=1e-4)
    monkeypatch.setattr(aft.teachers, "extract_to_cache", no_extraction)
    assert torch.equal(teachers_of(tmp_path, teacher_image_size=16).train[0], teachers.train[0])
    with pytest.raises(UserError, match="holds features of images at 16 px"):
        teachers_of(tmp_path)


# ---- offline without HF_HUB_OFFLINE ----------------------------------------------------------------

@pytest.fixture
def online_process(monkeypatch):
    """This process as if started without any offline variable, the hub check not made yet; what the
    check sets is undone afterwards. The network is never touched: `reachable` answers."""
    import datasets.config
    from huggingface_hub import constants
    import aft.models.hub as hub
    for name in ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"] + \
            [v for v in os.environ if v.lower().endswith("_proxy")]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(hub, "_decided", False)
    calls = []

    def answer(up):
        monkeypatch.setattr(hub, "reachable", lambda host, port: calls.append((host, port)) or up)
        return calls

    return answer


def test_unreachable_hub_makes_the_process_offline_once(online_process, capsys, tmp_path):
    import datasets.config
    from huggingface_hub import constants
    from aft.datasets.hf_text import hf_split
    from aft.models import resolve_model
    calls = online_process(False)
    with pytest.raises(UserError) as e:
        resolve_model("nobody-aft-test/no-such-model").build(pretrained=True)
    assert str(e.value).startswith("cannot load Hugging Face model 'nobody-aft-test/no-such-model' (")
    with pytest.raises(UserError, match=r"offline \(HF_HUB_OFFLINE=1\) and not in the datasets cache"):
        hf_split("x", "nobody-aft-test/no-such-dataset", None, "train", str(tmp_path))
    assert calls == [("huggingface.co", 443)]  # checked once per process
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE
    assert capsys.readouterr().out == ("note: the Hugging Face hub (https://huggingface.co) cannot be reached, so "
                                       "this run is offline (HF_HUB_OFFLINE=1): only models and datasets already "
                                       "in the caches load\n")


def test_reachable_hub_or_a_local_folder_changes_nothing(online_process, capsys, tmp_path):
    from huggingface_hub import constants
    from aft.models.hub import check_hub
    calls = online_process(True)
    check_hub(str(tmp_path))  # a local folder needs no hub: not even checked
    assert calls == []
    check_hub("org/model")
    check_hub("org/model")
    assert calls == [("huggingface.co", 443)] and "HF_HUB_OFFLINE" not in os.environ
    assert not constants.HF_HUB_OFFLINE and capsys.readouterr().out == ""


def test_an_offline_variable_skips_the_check(online_process, monkeypatch):
    from huggingface_hub import constants
    from aft.models.hub import check_hub
    calls = online_process(False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    check_hub("org/model")
    assert calls == []


def test_the_check_connects_through_a_proxy_when_one_is_set(monkeypatch):
    from aft.models.hub import connect_address
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "")
    assert connect_address("https://huggingface.co") == ("proxy.example", 3128)
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    assert connect_address("https://huggingface.co") == ("huggingface.co", 443)


# ---- first_line ------------------------------------------------------------------------------------

def test_first_line_cuts_at_a_word_and_marks_the_cut():
    for message, limit, quoted in [
        ("cannot find the requested files in the local cache", 30, "cannot find the requested..."),
        ("cannot find the requested files", 28, "cannot find the requested..."),  # a space right at the cut
        ("https://huggingface.co/some/very/long/path", 20, "https://huggingfa..."),  # one word: cut inside it
        ("short enough\nsecond line", 30, "short enough"),
    ]:
        assert first_line(OSError(message), limit) == quoted and len(quoted) <= limit


# ---- seeds ------------------------------------------------------------------------------------------

def test_computing_a_missing_cache_does_not_change_the_students_start(tmp_path):
    """The same --seed gives the same first step whether the teacher's cache existed or was computed
    on the spot: the run's results (losses and accuracy at every evaluation) are identical."""
    run = ["--dataset=digits", "--model_class=resnet10t", "--image_size=16", "--pretrained_models=efficientnet_lite2",
           "--teacher_image_size=16", "--method=kd", "--steps=2", "--eval_steps=1", "--batch_size=32",
           "--train_frac=0.1", "--run_name=r"]
    first = cli("run.py", *run, "--out_dir=computed", cwd=tmp_path)
    assert "computing them now" in first.stdout
    second = cli("run.py", *run, "--out_dir=cached", cwd=tmp_path)
    assert "computing them now" not in second.stdout
    evals = [json.load(open(tmp_path / out / "r.json"))["evals"] for out in ("computed", "cached")]
    assert evals[0] == evals[1] and evals[0][0]["loss"] > 0
