"""A run's identity: runs of different settings never share a results file, a results JSON or a
checkpoint of another configuration is never overwritten, --skip_done skips only an identical run,
a sweep started again with another model runs it, and every result records where it came from."""
import hashlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict

import numpy
import pytest
import timm
import torch
import transformers

from aft.config import BOOKKEEPING, Config
from aft.identity import default_run_name, result_identity
from aft.errors import UserError
from aft.experiment import run
from aft.features import make_meta, write_features
from aft.record import git_state
from tests.conftest import ROOT
from tests.test_cli import cli
from tests.test_reliability import error_line

TINY = dict(dataset="digits", model_class="resnet10t", image_size=16, method="init", prec=0.0, steps=2,
            eval_steps=2, batch_size=32, device="cpu")


def tiny(**changes):
    return Config(**{**TINY, **changes})


RUN = ["--dataset=digits", "--model_class=resnet10t", "--image_size=16", "--method=init", "--steps=2",
       "--eval_steps=2", "--batch_size=32", "--device=cpu"]


# ---- names -----------------------------------------------------------------------------------------

def test_default_name_is_the_readable_part_and_a_hash_of_every_setting():
    cfg = tiny(eval_steps=1, use_val=True, out_dir="elsewhere", compile=True, skip_done=True)
    # every flag but the bookkeeping ones and those init ignores (beta, the teachers', other methods'
    # hyperparameters); its own hyperparameter at its default; --paper_exact, added later, only when given
    ignored = {"prec", "pretrained_models", "teacher_image_size", "paper_exact"}
    identity = {k: v for k, v in asdict(cfg).items() if k not in BOOKKEEPING | ignored | {"method_args", "data"}}
    identity.update(no_augment=True)
    assert result_identity(cfg) == identity and "steps" in identity and "out_dir" not in identity
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    assert default_run_name(cfg) == f"digits_resnet10t_init_lr0.001_seed0_val_{digest}"  # no beta: init has none
    # Where files go, logging and speed leave the name alone; an int beta names the run its float does.
    assert default_run_name(tiny()) == default_run_name(tiny(eval_steps=1, out_dir="x", device="cuda"))
    kd = dict(method="kd", pretrained_models="t")
    assert default_run_name(tiny(prec=1, **kd)) == default_run_name(tiny(prec=1.0, **kd))
    assert "_kd_prec1_" in default_run_name(tiny(prec=1, **kd))


@pytest.mark.slow
@pytest.mark.parametrize("flag, first, second, common", [
    ("no_augment", True, False, {}),
    ("steps", 2, 4, {}),
    ("batch_size", 32, 16, {}),
    ("init_model", "", "efficientnet_lite2", dict(model_class="efficientnet_lite2", image_size=32)),
    ("image_size", 16, 24, {}),
    ("wd", 0.0, 0.01, {}),
])
def test_runs_differing_in_one_flag_keep_both_results(tmp_path, flag, first, second, common):
    """The user's report: a 4-step run replaced a 50-step run's results file of the same name."""
    def given(value):  # a method's hyperparameter is given through method_args, as the scripts do
        return dict(method_args={flag: value}) if flag == "no_augment" else {flag: value}
    a = run(tiny(**common, **given(first), out_dir=str(tmp_path)))
    path_a = tmp_path / f"{a.run_name}.json"
    kept = path_a.read_bytes()
    b = run(tiny(**common, **given(second), out_dir=str(tmp_path)))
    assert a.run_name != b.run_name
    assert path_a.read_bytes() == kept
    assert json.loads(kept)["config"][flag] == first
    assert json.load(open(tmp_path / f"{b.run_name}.json"))["config"][flag] == second
    assert len(list(tmp_path.glob("*.json"))) == 2


# ---- another configuration under the same name: refused, the file untouched -------------------------

@pytest.mark.slow
def test_results_of_another_configuration_are_refused_before_any_work(tmp_path):
    cli("run.py", *RUN, "--run_name=r", cwd=tmp_path)
    kept = (tmp_path / "results" / "r.json").read_bytes()
    line = error_line(cli("run.py", *RUN, "--steps=4", "--wd=0.01", "--run_name=r", cwd=tmp_path, check=False))
    assert line == ("error: ./results/r.json was written with --steps=2 (now 4), --wd=0.0 (now 0.01); "
                    "pass another --run_name or --out_dir, or delete it to replace it")
    assert (tmp_path / "results" / "r.json").read_bytes() == kept
    # Refused before the teachers' features are looked for (a kd run would compute the missing cache).
    line = error_line(cli("run.py", *RUN, "--method=kd", "--pretrained_models=efficientnet_lite2", "--run_name=r",
                          cwd=tmp_path, check=False))
    assert line.startswith("error: ./results/r.json was written with --method=init (now kd), "
                           "--pretrained_models=efficientnet_lite2 (not a setting of that run), ")
    assert "--no_augment=True (not a setting of this run)" in line  # init reads it, kd does not
    assert not (tmp_path / "features").exists() and (tmp_path / "results" / "r.json").read_bytes() == kept


@pytest.mark.slow
def test_checkpoint_of_another_configuration_is_refused_when_not_resuming(tmp_path):
    cli("run.py", *RUN, "--run_name=r", "--ckpt_dir=ckpt", "--out_dir=first", cwd=tmp_path)
    kept = (tmp_path / "ckpt" / "r.pt").read_bytes()
    line = error_line(cli("run.py", *RUN, "--batch_size=16", "--run_name=r", "--ckpt_dir=ckpt", "--out_dir=second",
                          cwd=tmp_path, check=False))
    assert line == ("error: ckpt/r.pt was written with --batch_size=32 (now 16); delete it, or pass another "
                    "--run_name or --ckpt_dir, to start afresh")
    assert (tmp_path / "ckpt" / "r.pt").read_bytes() == kept and not (tmp_path / "second").exists()


def test_a_file_that_is_not_a_result_is_never_overwritten(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("my notes")
    with pytest.raises(UserError, match=r"r.json is not a results JSON of run.py \(.*\); pass another --run_name"):
        run(tiny(run_name="r", out_dir=str(tmp_path)))
    assert path.read_text() == "my notes"


# ---- --skip_done -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_skip_done_skips_only_an_identical_configuration(tmp_path):
    first = cli("run.py", *RUN, cwd=tmp_path)
    [path] = (tmp_path / "results").glob("*.json")
    kept, inode = path.read_bytes(), path.stat().st_ino
    assert "step 2/2" in first.stdout

    # The same configuration (other bookkeeping flags do not matter): skipped, the file untouched.
    out = cli("run.py", *RUN, "--skip_done=True", "--eval_steps=1", "--out_dir=./results", cwd=tmp_path)
    assert f"done already: ./results/{path.name}" in out.stdout and "step " not in out.stdout
    assert path.read_bytes() == kept and path.stat().st_ino == inode

    # Another configuration is trained (under its own name), even with --skip_done.
    out = cli("run.py", *RUN, "--steps=4", "--skip_done=True", cwd=tmp_path)
    assert "done already" not in out.stdout and "step 4/4" in out.stdout
    assert len(list((tmp_path / "results").glob("*.json"))) == 2 and path.read_bytes() == kept

    # Without --skip_done the identical run is redone and replaces its own file: nothing is lost.
    out = cli("run.py", *RUN, cwd=tmp_path)
    assert "done already" not in out.stdout and "step 2/2" in out.stdout and path.stat().st_ino != inode


# ---- the sweep script ------------------------------------------------------------------------------

@pytest.mark.slow
def test_sweep_with_another_model_runs_it(tmp_path):
    """The user's report: sweep_beta.sh with MODEL=resnet18 after MODEL=resnet10t said "done already"
    for every run and printed resnet10t's table."""
    from aft.datasets import load_task
    task = load_task("digits")
    train, test = torch.randn(len(task.train), 8), torch.randn(len(task.test), 8)
    write_features(str(tmp_path / "features" / "teacher_digits.pt"), train, test,
                   make_meta("teacher", "digits", train, test))
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", DATASET="digits", INIT_MODEL="",
               PRETRAINED="teacher", METHODS="init", SEEDS="0", BETAS="1", STEPS="2", EVAL_STEPS="2",
               BATCH_SIZE="32", EXTRA="--image_size=16 --device=cpu")
    script = os.path.join(ROOT, "examples", "sweep_beta.sh")
    outputs = {}
    for model in ("resnet10t", "resnet18"):
        out = subprocess.run(["sh", script], cwd=tmp_path, env=dict(env, MODEL=model), capture_output=True,
                             text=True, timeout=900)
        assert out.returncode == 0, out.stdout + out.stderr
        outputs[model] = out.stdout
    assert "done already" not in outputs["resnet18"]
    assert "| digits | resnet18 | - | init |" in outputs["resnet18"] and "resnet10t" not in outputs["resnet18"]
    for model in ("resnet10t", "resnet18"):
        results = [json.load(open(p)) for p in (tmp_path / "results" / f"sweep_digits_{model}").glob("*.json")]
        assert sorted(r["config"]["use_val"] for r in results) == [False, True]
        assert {r["config"]["model_class"] for r in results} == {model}


# ---- provenance ------------------------------------------------------------------------------------

def git(*args):
    return subprocess.run(["git", "--no-optional-locks", "-C", ROOT, *args], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.slow
def test_results_record_their_provenance(tmp_path):
    args = [*RUN, "--run_name=r"]
    cli("run.py", *args, cwd=tmp_path)
    prov = json.load(open(tmp_path / "results" / "r.json"))["provenance"]
    assert prov["commit"] == git("rev-parse", "HEAD")
    assert prov["dirty"] == bool(git("status", "--porcelain", "--untracked-files=no"))
    assert prov["argv"] == [os.path.join(ROOT, "run.py"), *args]
    assert (prov["python"], prov["torch"], prov["timm"], prov["transformers"], prov["numpy"]) == \
        (platform.python_version(), torch.__version__, timm.__version__, transformers.__version__, numpy.__version__)


def test_commit_is_unknown_outside_the_codes_own_checkout(tmp_path):
    assert git_state(str(tmp_path)) == ("unknown", "unknown")  # no git checkout at all
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "site-packages").mkdir()  # code installed inside another project's checkout
    assert git_state(str(tmp_path / "site-packages")) == ("unknown", "unknown")
