"""Nothing crashes on the way: runs that need one missing cache at once share one extraction; folders a
run cannot write are refused before any work, and results survive a full disk; SIGINT and SIGTERM stop
a run at a step with a checkpoint and the command that resumes it to the uninterrupted run's numbers
(and a Slurm task requeues itself); --resume without a checkpoint says so; flags a method ignores
change no run's identity; the scripts run without an activated environment, and without wandb."""
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from aft.config import Config
from aft.errors import UserError
from aft.identity import legacy_run_name
from aft.loop import SIGNAL_AT_STEP
from aft.plan import make_plan
from tests.conftest import PYTHON, ROOT, visible
from tests.test_cli import cli
from tests.test_reliability import STUDENT, error_line

TEACHER = ["--pretrained_models=efficientnet_lite2", "--teacher_image_size=32"]
TINY = [*STUDENT, "--steps=8", "--eval_steps=4"]


def script(name, *args, cwd, **env_changes):
    """A script started as a user would, not waited for."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    env.pop(SIGNAL_AT_STEP, None)
    env.update(env_changes)
    return subprocess.Popen([PYTHON, os.path.join(ROOT, name), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---- runs at once ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_three_runs_needing_one_missing_cache_share_one_extraction(tmp_path):
    runs = [script("run.py", *TINY, *TEACHER, "--method=kd", f"--run_name=r{i}", cwd=tmp_path) for i in range(3)]
    outputs = [run.communicate(timeout=900) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0 and "Traceback" not in err, err[-3000:]
    waited = [out for out, _ in outputs if "another process is making it" in out]
    assert len(waited) == 2 and all("another process made the rows this needs meanwhile" in out for out in waited)
    assert sorted(os.listdir(tmp_path / "results")) == ["r0.json", "r1.json", "r2.json"]
    assert visible(tmp_path / "features") == ["efficientnet_lite2_digits.pt"]  # no .parts left
    caches = [json.load(open(tmp_path / "results" / f"r{i}.json"))["evals"] for i in range(3)]
    assert caches[0] == caches[1] == caches[2]  # the same features, the same run


@pytest.mark.slow
def test_two_save_features_at_once_both_finish(tmp_path):
    runs = [script("save_features.py", "--model_class=efficientnet_lite2", "--dataset=digits", "--image_size=32",
                   cwd=tmp_path) for _ in range(2)]
    for run in runs:
        out, err = run.communicate(timeout=900)
        assert run.returncode == 0 and "Traceback" not in err, err[-3000:]
        assert "saved ./features/efficientnet_lite2_digits.pt: train 1437 x 1280" in out


# ---- folders a run writes ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("flag", ["out_dir", "ckpt_dir", "features_dir"])
def test_a_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, flag):
    (tmp_path / "blocked").write_text("a file where the folder should be")
    line = error_line(cli("run.py", *TINY, *TEACHER, "--method=kd", f"--{flag}=blocked/sub", cwd=tmp_path,
                          check=False))
    assert line.startswith(f"error: --{flag}=blocked/sub cannot be written (") and "is a file, not a folder" in line
    assert line.endswith(f"give --{flag} a folder you can write")
    assert sorted(os.listdir(tmp_path)) == ["blocked"]  # nothing decoded, extracted or trained


def test_the_results_survive_a_full_disk(tmp_path, monkeypatch, capsys):
    from aft.experiment import run
    from aft.record import RunRecord
    write = RunRecord.write

    def full(self, path):
        if str(tmp_path) in path:
            raise OSError(28, "No space left on device")
        return write(self, path)
    monkeypatch.setattr(RunRecord, "write", full)
    cfg = Config(dataset="digits", model_class="resnet10t", image_size=16, method="init", pretrained_models="",
                 steps=2, eval_steps=2, batch_size=32, out_dir=str(tmp_path / "results"), run_name="full")
    with pytest.raises(UserError) as err:
        run(cfg)
    message = str(err.value)
    assert message.startswith(f"the results could not be written to {tmp_path}/results/full.json (")
    kept = re.search(r"it is in (\S+) instead", message).group(1)
    saved = RunRecord.read(kept)
    assert saved.run_name == "full" and len(saved.evals) == 1
    os.remove(kept)


# ---- signals ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted run the interrupted ones must end as."""
    folder = tmp_path_factory.mktemp("whole")
    cli("run.py", *TINY, "--method=init", "--run_name=whole", cwd=folder)
    return json.load(open(folder / "results" / "whole.json"))


@pytest.mark.slow
@pytest.mark.parametrize("name, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_stops_at_a_step_with_a_checkpoint_and_the_command_to_resume(whole, tmp_path, name, status):
    run = ["--method=init", "--run_name=whole", "--ckpt_dir=ckpt"]
    proc = cli("run.py", *TINY, *run, cwd=tmp_path, check=False, **{SIGNAL_AT_STEP: f"{name}:0:3"})
    assert proc.returncode == status and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {name}: stopped at step 3 of 8; checkpoint ckpt/whole.pt; resume with: python ")
    assert torch.load(tmp_path / "ckpt" / "whole.pt", weights_only=True)["step"] == 3
    assert not (tmp_path / "results").exists()
    command = line.split("resume with: ")[1].split()
    assert command[1] == os.path.join(ROOT, "run.py") and command[-1] == "--resume=True"
    resumed = cli("run.py", *command[2:], cwd=tmp_path)
    assert "resumed whole from ckpt/whole.pt at step 3" in resumed.stdout
    done = json.load(open(tmp_path / "results" / "whole.json"))
    assert done["evals"] == whole["evals"]  # losses and accuracies bit for bit: the run is the uninterrupted one


@pytest.mark.slow
def test_without_ckpt_dir_the_line_says_how_to_make_a_run_resumable(tmp_path):
    proc = cli("run.py", *TINY, "--method=init", cwd=tmp_path, check=False, **{SIGNAL_AT_STEP: "SIGINT:0:2"})
    assert proc.returncode == 130
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: SIGINT: stopped at step 2 of 8, and nothing was saved (no --ckpt_dir); to make a run resumable, "
        "give it --ckpt_dir=DIR: it then saves at every evaluation and when stopped")


@pytest.mark.slow
def test_resume_without_a_checkpoint_starts_at_step_0_and_says_so(tmp_path):
    out = cli("run.py", *STUDENT, "--method=init", "--steps=2", "--eval_steps=2", "--ckpt_dir=ckpt", "--resume=True",
              "--run_name=first", cwd=tmp_path)
    assert "note: no checkpoint of this run in ckpt (first.pt): starting at step 0" in out.stdout
    assert (tmp_path / "results" / "first.json").exists()


STUB_SCONTROL = """#!/bin/sh
[ "$1" = requeue ] && echo "$2" >> "$STUB_DIR/requeued"
"""


@pytest.mark.slow
def test_a_preempted_slurm_task_requeues_itself_and_resumes(tmp_path):
    """SIGTERM in the first validation task (the hook, once): run.py writes its checkpoint and exits 143,
    the task requeues itself (scontrol), Slurm (here the stand-in sbatch) starts it again and it resumes."""
    from tests.test_sweeps import ENV, OUT, SLURM_SWEEP, STUB_SBATCH, workdir
    (tmp_path / "work").mkdir()
    path = workdir(tmp_path / "work")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", STUB_SBATCH), ("scontrol", STUB_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(ENV, PATH=f"{bin_dir}{os.pathsep}{ENV['PATH']}", STUB_DIR=str(tmp_path), STEPS="4", EVAL_STEPS="4",
               SEEDS="0", **{SIGNAL_AT_STEP: f"SIGTERM:0:2:{tmp_path / 'signalled'}"})
    out = subprocess.run(["sh", SLURM_SWEEP], cwd=path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    log = (tmp_path / "jobs.log").read_text()
    assert "pre-empted: requeueing 101_0, which resumes from its checkpoint" in log
    assert "error: SIGTERM: stopped at step 2 of 4; checkpoint" in log and "at step 2\n" in log.replace("\r", "\n")
    assert (tmp_path / "requeued").read_text().split() == []  # the stand-in sbatch consumed the requeue
    assert len(list((path / OUT).glob("*_val_*.json"))) == 1


# ---- odd values -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_batch_larger_than_the_training_rows_is_a_warning(tmp_path):
    proc = cli("run.py", *STUDENT, "--method=init", "--steps=1", "--eval_steps=1", "--batch_size=5000",
               "--run_name=big", cwd=tmp_path)
    assert "warning: --batch_size=5000 is more than the 1437 training rows: every step uses all 1437" in proc.stderr
    assert json.load(open(tmp_path / "results" / "big.json"))["n_train"] == 1437


@pytest.mark.slow
def test_a_corrupt_cache_names_the_command_never_weights_only(tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "efficientnet_lite2_digits.pt").write_bytes(os.urandom(3000))
    line = error_line(cli("run.py", *TINY, *TEACHER, "--method=kd", cwd=tmp_path, check=False))
    assert "features/efficientnet_lite2_digits.pt is not a readable feature file: it is corrupt or truncated" in line
    assert "delete it and make it again with: python save_features.py --model_class=efficientnet_lite2 " \
           "--dataset=digits" in line
    assert "weights_only" not in line


# ---- identity ---------------------------------------------------------------------------------------------

def test_flags_a_method_ignores_change_no_identity(tmp_path, capsys, monkeypatch):
    common = dict(dataset="digits", model_class="resnet10t", image_size=16, out_dir=str(tmp_path))
    base = make_plan(Config(method="init", pretrained_models="", **common))
    ignored = make_plan(Config(method="init", prec=10.0, pretrained_models="efficientnet_lite2",
                               method_args={"prior_lr": 0.5}, **common))
    assert ignored.run_name == base.run_name and "prec" not in base.identity and "prec" not in base.run_name
    notes = capsys.readouterr().out.splitlines()
    assert notes == ["note: --prec=10.0 changes nothing for --method=init, so it is no part of the run's identity",
                     "note: --pretrained_models=efficientnet_lite2 changes nothing for --method=init, so it is no "
                     "part of the run's identity",
                     "note: --prior_lr=0.5 changes nothing for --method=init, so it is no part of the run's identity"]
    kd = dict(method="kd", pretrained_models="efficientnet_lite2", features_dir=str(tmp_path), **common)
    assert make_plan(Config(**kd, method_args={"learn_scales": False})).run_name == make_plan(Config(**kd)).run_name
    assert make_plan(Config(**kd, prec=1.0)).run_name != make_plan(Config(**kd)).run_name
    monkeypatch.setenv("AFT_IMAGE_SIZE", "48")  # changes the numbers: a run of its own
    assert make_plan(Config(method="init", pretrained_models="", **common)).run_name != base.run_name


@pytest.mark.slow
def test_a_run_named_by_earlier_versions_is_still_skipped(tmp_path):
    """Before flags the method ignores left the identity, every flag was hashed: such a results file is
    found under its old name by --skip_done, and not run again."""
    cfg = Config(dataset="digits", model_class="resnet10t", image_size=16, method="init", pretrained_models="",
                 steps=2, eval_steps=2, batch_size=32, out_dir=str(tmp_path))
    old = legacy_run_name(cfg)
    assert old != make_plan(cfg).run_name and "_init_prec3_" in old
    run = [*STUDENT, "--method=init", "--pretrained_models=", "--steps=2", "--eval_steps=2", "--out_dir=."]
    cli("run.py", *run, f"--run_name={old}", cwd=tmp_path)
    out = cli("run.py", *run, "--skip_done=True", cwd=tmp_path)
    assert out.stdout.strip().splitlines()[-2] == f"done already: ./{old}.json"


# ---- the environment --------------------------------------------------------------------------------------

def base_python():
    """The Python this test's environment was made from: without the project's packages."""
    return os.path.join(sys.base_prefix, "bin", f"python{sys.version_info.major}.{sys.version_info.minor}")


@pytest.mark.slow
@pytest.mark.skipif(sys.prefix == sys.base_prefix or not os.path.exists(os.path.join(ROOT, ".venv")),
                    reason="needs the .venv setup.sh makes (the project's Python found without activation)")
def test_examples_and_benchmarks_run_without_an_active_environment(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "DATASET": "digits", "MODELS": "efficientnet_lite2", "EXTRA": "--image_size=32"}
    out = subprocess.run(["sh", os.path.join(ROOT, "examples", "save_features.sh")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "saved ./features/efficientnet_lite2_digits.pt" in out.stdout
    again = subprocess.run(["sh", os.path.join(ROOT, "examples", "save_features.sh")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=900)
    assert "exists: ./features/efficientnet_lite2_digits.pt" in again.stdout
    bench = subprocess.run([base_python(), os.path.join(ROOT, "benchmarks", "logme.py"), "--n=300", "--d=16", "--c=3"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert json.loads(bench.stdout.splitlines()[-1])


@pytest.mark.slow
def test_use_wandb_without_wandb_is_one_line(tmp_path):
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "wandb.py").write_text("raise ImportError('wandb is not installed')\n")
    line = error_line(cli("run.py", *STUDENT, "--method=init", "--use_wandb=True", cwd=tmp_path, check=False,
                          PYTHONPATH=str(blocker)))
    assert line == "error: --use_wandb=True needs the package wandb (0.19.10 or newer): pip install wandb, or drop " \
                   "--use_wandb"
    assert sorted(os.listdir(tmp_path)) == ["blocked"]


def test_signals_are_left_as_they_were_after_a_run(tmp_path):
    from aft.experiment import run
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    run(Config(dataset="digits", model_class="resnet10t", image_size=16, method="init", pretrained_models="",
               steps=1, eval_steps=1, batch_size=32, out_dir=str(tmp_path)))
    assert {s: signal.getsignal(s) for s in before} == before
