"""The scripts end to end, as a user runs them: save_features.py, then run.py for each method."""
import json
import os
import re
import subprocess

import pytest
import torch

from aft.methods import get_method
from tests.conftest import PYTHON, ROOT

# The teacher's cache is made at 32 px (the workdir fixture), so runs ask for that size.
IMAGE_RUN = ["--dataset=digits", "--model_class=resnet10t", "--image_size=16", "--pretrained_models=efficientnet_lite2",
             "--teacher_image_size=32", "--steps=6", "--eval_steps=3", "--batch_size=32"]


def cli(script, *args, cwd, check=True, **env_changes):
    """Run a script as a user would; `env_changes` set variables (None: unset)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    for key, value in env_changes.items():
        env.pop(key, None) if value is None else env.__setitem__(key, value)
    proc = subprocess.run([PYTHON, os.path.join(ROOT, script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def result_file(folder, name):
    """The one results JSON in `folder` whose default name starts with `name` (its readable part):
    the default name ends with 8 hex digits of a hash of the run's configuration."""
    (path,) = [p for p in folder.glob(f"{name}_*.json") if re.fullmatch(r"[0-9a-f]{8}", p.stem[len(name) + 1:])]
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with EfficientNet-Lite2 features of digits, made by save_features.py itself."""
    work = tmp_path_factory.mktemp("cli")
    out = cli("save_features.py", "--model_class=efficientnet_lite2", "--dataset=digits", "--image_size=32",
              cwd=work)
    assert "saved ./features/efficientnet_lite2_digits.pt: train 1437 x 1280, test 360 x 1280" in out.stdout
    return work


@pytest.mark.slow
@pytest.mark.parametrize("method", ["init", "aft", "kd"])
def test_run_writes_results(workdir, method):
    out = cli("run.py", *IMAGE_RUN, f"--method={method}", "--prec=2", "--seed=3", cwd=workdir)
    beta = "_prec2" if get_method(method).takes_beta() else ""  # a name has beta only where the method has one
    name = f"digits_resnet10t_{method}{beta}_lr0.001_seed3"
    assert "final test accuracy:" in out.stdout and name in out.stdout
    res = json.load(open(result_file(workdir / "results", name)))
    assert res["config"]["method"] == method and res["config"]["prec"] == 2 and res["config"]["seed"] == 3
    assert [e["step"] for e in res["evals"]] == [3, 6] and res["eval_split"] == "test"
    assert res["final_acc"] == res["evals"][-1]["acc"] and 0 <= res["final_acc"] <= 1
    assert res["n_eval"] == 360 and res["n_train"] == 1437
    if method == "init":
        assert all(e["reg"] == 0 for e in res["evals"])
    else:
        assert all(e["reg"] > 0 for e in res["evals"])


def test_use_val_train_frac_and_checkpoint(workdir):
    cli("run.py", *IMAGE_RUN, "--method=aft", "--use_val=True", "--train_frac=0.5", "--ckpt_dir=ckpt",
        "--run_name=valrun", cwd=workdir)
    res = json.load(open(workdir / "results" / "valrun.json"))
    # the paper's split: half of all 1437 rows, and the 10% held out beside them (random_split's sizes)
    assert res["eval_split"] == "val" and res["n_eval"] == 144 and res["n_train"] == 719
    state = torch.load(workdir / "ckpt" / "valrun.pt", weights_only=True)
    assert state["step"] == 6 and "scales" in state["method"]


@pytest.mark.slow
def test_wandb_logs_offline_with_the_full_config(workdir):
    """Without credentials --use_wandb logs offline: one run folder, under the results folder, holding the
    whole config."""
    cli("run.py", *IMAGE_RUN, "--method=aft", "--use_wandb=True", "--wandb_group=sweep1", "--run_name=wb",
        cwd=workdir, WANDB_MODE=None, WANDB_API_KEY=None, WANDB_DIR=None)
    assert not (workdir / "wandb").exists()  # under the results folder, not the current one
    (run,) = (workdir / "results" / "wandb").glob("offline-run-*")
    record = next(run.glob("*.wandb")).read_bytes()  # what `wandb sync` uploads later
    for text in (b"pretrained_models", b"efficientnet_lite2", b"learn_scales", b"prior_lr", b"sweep1", b"test_acc"):
        assert text in record, text


@pytest.mark.slow
def test_missing_features_are_computed_on_the_spot(tmp_path):
    out = cli("run.py", *IMAGE_RUN, "--method=kd", "--steps=2", "--eval_steps=2", cwd=tmp_path)
    assert "features ./features/efficientnet_lite2_digits.pt not found: computing them now" in out.stdout
    assert torch.load(tmp_path / "features" / "efficientnet_lite2_digits.pt", weights_only=True)["train"].shape == (1437, 1280)


@pytest.mark.slow
def test_text_run_with_cached_features(tmp_path, demo_features):
    """The offline text demo's path (tweets, tiny BERT) on a few steps, with a cache of the right shape."""
    from aft.datasets import load_task
    task = load_task("tweets")
    cli("run.py", "--steps=4", "--eval_steps=2", "--train_frac=0.02", "--use_val=True", "--run_name=text", cwd=tmp_path)
    res = json.load(open(tmp_path / "results" / "text.json"))
    assert res["config"]["model_class"] == "tiny_bert" and res["config"]["method"] == "aft"
    # the paper's split: 2% of the whole train split (random_split's share sizes), the 10% held out aside
    paper_train, _, _ = torch.utils.data.random_split(range(len(task.train)), [0.02, 0.1, 0.88],
                                                      generator=torch.Generator().manual_seed(42))
    assert res["n_train"] == len(paper_train)


def test_helpfull_lists_every_spec_flag():
    out = cli("run.py", "--helpfull", cwd=ROOT, check=False)  # absl exits 1 after printing help
    for flag in ["seed", "model_class", "init_model", "dataset", "pretrained_models", "train_frac", "use_val",
                 "method", "prec", "learn_scales", "steps", "eval_steps", "optimizer", "batch_size", "lr", "wd",
                 "no_augment", "use_wandb", "prior_lr", "ckpt_dir", "run_name", "features_dir", "data_dir",
                 "device", "precision", "out_dir"]:
        assert f"--{flag}:" in out.stdout or f"--[no]{flag}:" in out.stdout, flag


@pytest.mark.parametrize("args, message", [
    (["--method=nope"], "flag --method=nope: value should be one of <aft|aft_dense|"),
    (["--prec=-1"], "--prec=-1.0 must be >= 0"),
    (["--dataset=nope"], "unknown dataset 'nope'; valid datasets: aircraft, boolq,"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    out = cli("run.py", *args, cwd=tmp_path, check=False)
    assert out.returncode == 2 and message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
