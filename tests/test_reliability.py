"""Reliability through the real scripts: every mistake is one line naming the fix (exit 2, no traceback),
a NaN stops the run and keeps the last checkpoint, a kill -9 never leaves a file that reads as
valid, and a killed run resumes to exactly the numbers of an uninterrupted one.

The cases tests/test_cli.py::test_bad_input_is_one_line (unknown method and dataset, beta < 0) and
tests/test_features.py (mismatch, truncation and pickles checked in-process) cover are not repeated.
"""
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from aft.errors import UserError
from aft.features import make_meta, read_features, write_features
from aft.files import STOP_BEFORE_RENAME
from tests.conftest import ROOT
from tests.test_cli import IMAGE_RUN, cli
from tests.test_features import Evil

STUDENT = ["--dataset=digits", "--model_class=resnet10t", "--image_size=16", "--batch_size=32"]


def error_line(proc):
    """The one line a failed script shows: exit 2, no traceback, the error last on stderr (progress
    bars, cleared with carriage returns, may precede it)."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in re.split(r"[\r\n]", proc.stderr) if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    return errors[0]


# ---- bad flags: refused before anything is loaded --------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("script, args, message", [
    ("run.py", ["--train_frac=0"], "--train_frac=0.0 must be in (0, 1]"),
    ("run.py", ["--train_frac=1.5"], "--train_frac=1.5 must be in (0, 1]"),
    ("run.py", ["--steps=0"], "--steps=0 must be > 0"),
    ("run.py", ["--batch_size=-4"], "--batch_size=-4 must be > 0"),
    ("run.py", ["--resume=True"], "--resume needs --ckpt_dir"),
    ("run.py", ["--method=init", "--model_class=nope"], "unknown model 'nope'; valid models: the embedded models "
                                                        "all-MiniLM-L6-v2, tiny_bert, efficientnet_lite2"),
    ("save_features.py", ["--batch_size=0"], "--batch_size=0 must be > 0"),
])
def test_bad_flag_is_one_line(tmp_path, script, args, message):
    line = error_line(cli(script, *args, cwd=tmp_path, check=False))
    assert message in line
    assert not os.path.exists(tmp_path / "results") and not os.path.exists(tmp_path / "features")


# ---- feature caches --------------------------------------------------------------------------------

@pytest.mark.slow
def test_missing_features_that_cannot_be_made_here_print_the_command(tmp_path, monkeypatch):
    """run.py computes a missing cache on the spot; when the model cannot be loaded here (offline,
    empty hub caches) the error gives the save_features.py command to run where it can."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = "vit_small_patch16_224.augreg_in1k"
    line = error_line(cli("run.py", *STUDENT, f"--pretrained_models={model}", "--method=aft", cwd=tmp_path,
                          check=False))
    assert f"missing feature file ./features/{model}_digits.pt" in line
    assert f"python save_features.py --model_class={model} --dataset=digits " \
           f"--save_path=./features/{model}_digits.pt" in line
    assert not os.path.exists(tmp_path / "features" / f"{model}_digits.pt")


def _write_cache(folder, n_train=1437, n_test=360, dataset="digits", dim=8):
    train, test = torch.randn(n_train, dim), torch.randn(n_test, dim)
    path = folder / "features" / "efficientnet_lite2_digits.pt"
    # made at the size the runs of IMAGE_RUN expect (--teacher_image_size=32)
    write_features(str(path), train, test, make_meta("efficientnet_lite2", dataset, train, test, image_size=32))
    return path


@pytest.mark.slow
def test_cache_that_does_not_match_the_dataset_is_refused(tmp_path):
    """Through run.py; tests/test_features.py checks every other mismatch (model, dataset, test rows)."""
    _write_cache(tmp_path, n_train=100)
    line = error_line(cli("run.py", *IMAGE_RUN, "--method=aft", cwd=tmp_path, check=False))
    assert "has 100 train rows but dataset digits has 1437" in line
    assert "create it again with: python save_features.py --model_class=efficientnet_lite2 --dataset=digits" in line


@pytest.mark.slow
def test_truncated_cache_is_refused(tmp_path):
    path = _write_cache(tmp_path)
    path.write_bytes(path.read_bytes()[:4000])
    line = error_line(cli("run.py", *IMAGE_RUN, "--method=kd", cwd=tmp_path, check=False))
    assert "features/efficientnet_lite2_digits.pt is not a readable feature file" in line
    assert "delete it and make it again with: python save_features.py --model_class=efficientnet_lite2" in line
    assert "weights_only" not in line  # PyTorch's advice to load it unsafely is not passed on


# ---- checkpoints -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_checkpoint_with_code_is_refused_on_resume(tmp_path):
    ckpt = tmp_path / "ckpt" / "r.pt"
    ckpt.parent.mkdir()
    torch.save({"model": {}, "step": Evil()}, ckpt, pickle_protocol=2)  # unpickling would run os.system
    line = error_line(cli("run.py", *STUDENT, "--method=init", "--steps=2", "--ckpt_dir=ckpt", "--run_name=r",
                          "--resume=True", cwd=tmp_path, check=False))
    assert "ckpt/r.pt is not a readable checkpoint" in line
    assert not os.path.exists(tmp_path / "pwned.txt") and not os.path.exists(tmp_path / "results")


@pytest.mark.slow
def test_nan_loss_stops_names_the_step_and_keeps_the_checkpoint(tmp_path):
    args = [*STUDENT, "--method=init", "--steps=6", "--eval_steps=1", "--ckpt_dir=ckpt", "--run_name=r"]
    line = error_line(cli("run.py", *args, "--lr=1e30", cwd=tmp_path, check=False))
    found = re.search(r"the loss became NaN or inf at step (\d+); the last good checkpoint is ckpt/r.pt "
                      r"\(step (\d+)\); lower --lr or --prec", line)
    assert found, line
    bad, kept = int(found.group(1)), int(found.group(2))
    assert 1 <= kept < bad <= 6
    state = torch.load(tmp_path / "ckpt" / "r.pt", weights_only=True)
    assert state["step"] == kept
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not os.path.exists(tmp_path / "results")  # no result from a diverged run
    # Resuming it with other flags would mix two runs into one result: refused, naming the flag.
    line = error_line(cli("run.py", *args, "--resume=True", cwd=tmp_path, check=False))
    assert "ckpt/r.pt was written with --lr=1e+30 (now 0.001); resume with the same flags" in line


@pytest.mark.slow
def test_killed_run_resumes_to_identical_numbers(tmp_path):
    """SIGKILL while the second checkpoint is being written, at its last moment: complete in its
    temporary file, not yet renamed. The checkpoint on disk is then still the first one, whole;
    resuming with the same flags gives the evaluations of an uninterrupted run exactly (batch order
    from (seed, epoch); model, AFT scales, optimizer, schedule and RNG state in the checkpoint)."""
    _write_cache(tmp_path, dim=32)  # random teacher features of the right shape: enough for AFT to learn scales
    args = [*STUDENT, "--pretrained_models=efficientnet_lite2", "--teacher_image_size=32", "--method=aft",
            "--steps=30", "--eval_steps=10", "--seed=5"]
    cli("run.py", *args, "--run_name=whole", cwd=tmp_path)

    ckpt_dir = tmp_path / "ckpt_kill"
    ckpt = ckpt_dir / "part.pt"
    proc = _start("run.py", *args, f"--ckpt_dir={ckpt_dir}", "--run_name=part", cwd=tmp_path)
    _kill_before_rename(proc, ckpt_dir, after=ckpt.exists)  # the first checkpoint is in place: the next one
    assert torch.load(ckpt, weights_only=True)["step"] == 10
    assert not os.path.exists(tmp_path / "results" / "part.json")
    [stray] = _temps(ckpt_dir)
    assert torch.load(ckpt_dir / stray, weights_only=True)["step"] == 20  # whole, yet never read as part.pt
    # pretend the kill was long ago: the next write clears stale leftovers
    os.utime(ckpt_dir / stray, (time.time() - 7200, time.time() - 7200))

    out = cli("run.py", *args, f"--ckpt_dir={ckpt_dir}", "--run_name=part", "--resume=True", cwd=tmp_path)
    assert re.search(r"resumed part from .*part.pt at step 10\b", out.stdout)
    whole = json.load(open(tmp_path / "results" / "whole.json"))
    part = json.load(open(tmp_path / "results" / "part.json"))
    assert [e["step"] for e in part["evals"]] == [10, 20, 30]
    assert part["evals"] == whole["evals"]  # bit-identical on CPU: loss, ce, reg and accuracy
    assert os.listdir(ckpt_dir) == ["part.pt"]


def _start(script, *args, cwd, stop=True):
    """A script started in the background, in the environment of tests.test_cli.cli, to be killed. It
    stops itself before each rename of a file it writes (aft.files.STOP_BEFORE_RENAME), so the test,
    not the machine's speed, decides when each write finishes or is killed; with stop=False it runs on."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", PYTHONPATH=ROOT,
               **({STOP_BEFORE_RENAME: "1"} if stop else {}))
    return subprocess.Popen([sys.executable, *([os.path.join(ROOT, script)] if script else []), *args], cwd=cwd,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_stopped(proc):
    """Until `proc` stops itself before a rename: the kernel reports it, no polling."""
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the process ended (wait status {status}) before the write it was to die in"


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _temps(folder):
    return [n for n in os.listdir(folder) if n.startswith(".tmp-")] if os.path.isdir(folder) else []


def _kill_before_rename(proc, folder, after=lambda: True):
    """Let `proc`'s writes finish until one into `folder` is stopped before its rename while after()
    holds, then SIGKILL it there: the new version complete in its temporary file, the target untouched."""
    try:
        while True:
            _wait_stopped(proc)
            if after() and _temps(folder):
                break
            proc.send_signal(signal.SIGCONT)
    finally:
        _kill(proc)
    assert proc.returncode == -signal.SIGKILL


# ---- kill -9 while a file is written ---------------------------------------------------------------

@pytest.mark.slow
def test_kill_during_save_features_leaves_no_readable_half_file(tmp_path):
    """save_features.py SIGKILLed while it writes the cache, at the last moment (the cache complete
    in its temporary file, not yet renamed): there is no cache, and run.py would say how to make it."""
    features = tmp_path / "features"
    proc = _start("save_features.py", "--model_class=efficientnet_lite2", "--dataset=digits", "--image_size=32",
                  cwd=tmp_path)
    _kill_before_rename(proc, features)
    with pytest.raises(UserError, match="missing feature file .* create it with: python save_features.py"):
        read_features(str(features / "efficientnet_lite2_digits.pt"))
    [stray] = _temps(features)
    cache = read_features(str(features / stray))  # the whole cache, never renamed into place
    assert (cache["train"].shape[0], cache["test"].shape[0]) == (1437, 360)


WRITER = textwrap.dedent("""
    import sys, torch
    from aft.features import write_features
    path = sys.argv[1]
    for k in range(1, 10**6):  # version k of the file holds the value k everywhere; until killed
        train, test = torch.full((1_000_000, 8), float(k)), torch.full((1000, 8), float(k))
        write_features(path, train, test, dict(model="m", dataset="d", k=k))
""")


@pytest.mark.slow
def test_kill_at_random_moments_never_leaves_a_half_written_file(tmp_path):
    """A writer rewriting a 32 MB cache in a loop, SIGKILLed after a random number of versions, at a
    random moment of the next write: the file is always one complete version (every value equal to
    the version in its meta), the last one renamed into place."""
    path = tmp_path / "m_d.pt"
    rng = random.Random(0)
    for _ in range(4):
        proc = _start(None, "-c", WRITER, str(path), cwd=tmp_path)
        try:
            done = rng.randint(1, 3)
            for _ in range(done):  # versions 1..done renamed into place
                _wait_stopped(proc)
                proc.send_signal(signal.SIGCONT)
            _wait_stopped(proc)  # version done + 1 complete in its temporary file
            expected = {done}
            if rng.random() < 0.5:
                # Or let it go on: the kill then lands in that rename or in the next write, wherever the
                # sleep ends, never past the next rename (the writer stops itself again before it).
                proc.send_signal(signal.SIGCONT)
                time.sleep(rng.uniform(0, 0.2))
                expected.add(done + 1)
        finally:
            _kill(proc)
        assert proc.returncode == -signal.SIGKILL
        cache = read_features(str(path), "m", "d")
        k = cache["meta"]["k"]
        assert k in expected and (cache["train"] == k).all() and (cache["test"] == k).all()
    # What a kill leaves is a hidden .tmp-*.pt that no reader ever opens (and the cache's hidden lock file).
    assert all(n in ("m_d.pt", ".m_d.pt.lock") or n.startswith(".tmp-") for n in os.listdir(tmp_path))


# ---- two writers of one cache at once --------------------------------------------------------------

REWRITER = textwrap.dedent("""
    import sys, torch
    from aft.features import make_meta, write_features
    train, test = torch.ones(1437, 8), torch.ones(360, 8)  # the cache made again: new features, no scores
    write_features(sys.argv[1], train, test, make_meta("teacher", "digits", train, test))
""")


def _waits_for_a_lock(pid):
    """Whether the kernel lists process `pid` as blocked waiting for a file lock ("->" in /proc/locks)."""
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "->" in fields and int(fields[fields.index("->") + 4]) == pid:
                return True
    return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux's /proc/locks to see a process wait")
@pytest.mark.parametrize("second", ["logme.py on other rows", "write_features making the cache again"])
def test_a_second_writer_waits_for_logme_and_neither_update_is_lost(tmp_path, second):
    """logme.py reads a cache, scores it and writes it back with its keys. A second writer of that cache
    at the same time (another logme.py, here with --use_val=True, or the cache made again) waits until
    the first has written: the first is stopped just before its rename, and the kernel shows the second
    blocked on the cache's lock, rather than finished. Without the lock the first's rename, coming last,
    wrote back what it had read: the other's LogME keys lost, or the new features silently replaced by
    the old ones."""
    path = tmp_path / "features" / "teacher_digits.pt"
    g = torch.Generator().manual_seed(0)
    old_train, old_test = torch.randn(1437, 8, generator=g), torch.randn(360, 8, generator=g)
    write_features(str(path), old_train, old_test, make_meta("teacher", "digits", old_train, old_test))
    first = _start("logme.py", "--model_class=teacher", "--dataset=digits", "--train_frac=0.5", cwd=tmp_path)
    other = None
    try:
        _wait_stopped(first)  # scored, its new version complete in a temporary file, the lock held
        if second.startswith("logme"):
            other = _start("logme.py", "--model_class=teacher", "--dataset=digits", "--use_val=True", cwd=tmp_path,
                           stop=False)
        else:
            other = _start(None, "-c", REWRITER, str(path), cwd=tmp_path, stop=False)
        while other.poll() is None and not _waits_for_a_lock(other.pid):
            time.sleep(0.05)
        assert other.poll() is None, "the second writer finished while the first held the cache"
        first.send_signal(signal.SIGCONT)
        assert first.wait() == 0 and other.wait() == 0
    finally:
        for proc in (first, other):
            if proc is not None and proc.poll() is None:
                _kill(proc)
    cache = read_features(str(path), "teacher", "digits")
    if second.startswith("logme"):
        assert "logme_score_train_frac=0.5" in cache and "logme_score_val" in cache
        assert torch.equal(cache["train"], old_train)
    else:  # the new features, without the scores of the old ones
        assert (cache["train"] == 1).all() and not [k for k in cache if k.startswith("logme")]
