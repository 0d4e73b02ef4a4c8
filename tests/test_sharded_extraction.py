"""save_features.py over several processes (torchrun, gloo on the CPU) and after a kill: the rows split
into chunk files that a restart reuses, merged by rank 0 into the one cache of a plain run; and
--device_map=auto refused where it cannot apply."""
import os
import subprocess
import sys

import pytest
import torch

from aft.distributed import World
from aft.errors import UserError
from aft.extract import KILL_AFTER_FIRST_CHUNK, check_device_map, load_chunk
from aft.files import atomic_save
from aft.models import resolve_model
from tests.conftest import PYTHON, ROOT, visible

# digits at 16 px in chunks of 200 rows: 8 train chunks, 2 test chunks
EXTRACT = ["--model_class=efficientnet_lite2", "--dataset=digits", "--image_size=16", "--chunk_rows=200",
           "--batch_size=64"]
TRAIN_CHUNKS = [f"train-{k:05d}-of-00008.pt" for k in range(8)]


def save_features(folder, name, nproc=1, kill_rank=None, args=()):
    """save_features.py writing `folder/name`, as one process or `nproc` under torchrun; `kill_rank`:
    that rank kills itself after saving its first chunk (the extraction's test hook)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop(KILL_AFTER_FIRST_CHUNK, None)
    if kill_rank is not None:
        env[KILL_AFTER_FIRST_CHUNK] = str(kill_rank)
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run([PYTHON, *launcher, os.path.join(ROOT, "save_features.py"), *EXTRACT, *args,
                           f"--save_path={folder / name}"], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)


def load(path):
    return torch.load(path, weights_only=True)


def chunk_files(parts):
    """Each chunk file's name and identity on disk (inode, modification time): a rewrite changes both."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts.glob("*-of-*.pt")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The cache of one uninterrupted process."""
    folder = tmp_path_factory.mktemp("one")
    out = save_features(folder, "one.pt")
    assert out.returncode == 0, out.stderr
    return load(folder / "one.pt")


def assert_same_cache(cache, reference, world_size):
    for split in ("train", "test"):
        assert cache[split].shape == reference[split].shape
        torch.testing.assert_close(cache[split], reference[split], rtol=0, atol=1e-5)
    assert cache["meta"]["world_size"] == world_size and reference["meta"]["world_size"] == 1


@pytest.mark.slow
def test_two_ranks_give_the_one_process_cache(tmp_path, reference):
    out = save_features(tmp_path, "two.pt", nproc=2)
    assert out.returncode == 0, out.stderr
    assert_same_cache(load(tmp_path / "two.pt"), reference, world_size=2)
    saved = [line for line in out.stdout.splitlines() if line.startswith("saved ")]
    assert len(saved) == 1 and saved[0].startswith(f"saved {tmp_path / 'two.pt'}: train 1437 x 1280, test 360 x 1280 (")
    assert visible(tmp_path) == ["two.pt"]  # the chunk folder is gone (a hidden lock file stays)


@pytest.mark.slow
def test_a_killed_two_rank_extraction_resumes_from_its_chunks(tmp_path, reference):
    """Rank 1 killed after its first chunk (torchrun then stops rank 0): started again, the ranks
    compute only the chunks that are missing; a restart with another number of processes finishes."""
    parts = tmp_path / "k.pt.parts"
    out = save_features(tmp_path, "k.pt", nproc=2, kill_rank=1)
    assert out.returncode != 0 and not (tmp_path / "k.pt").exists()
    before = chunk_files(parts)
    assert TRAIN_CHUNKS[1] in before  # rank 1's first chunk: 1 of 0..7 strided over 2 ranks
    # Started again and killed again after rank 1's first new chunk, so the folder can be looked at.
    out = save_features(tmp_path, "k.pt", nproc=2, kill_rank=1)
    assert out.returncode != 0
    after = chunk_files(parts)
    assert {name: after[name] for name in before} == before  # reused, not written again
    assert TRAIN_CHUNKS[3] in after and TRAIN_CHUNKS[3] not in before
    out = save_features(tmp_path, "k.pt")  # one process finishes what two began
    assert out.returncode == 0, out.stderr
    assert_same_cache(load(tmp_path / "k.pt"), reference, world_size=1)
    assert not parts.exists()


@pytest.mark.slow
def test_a_killed_single_process_extraction_resumes(tmp_path, reference):
    parts = tmp_path / "s.pt.parts"
    out = save_features(tmp_path, "s.pt", kill_rank=0)
    assert out.returncode == -9 and list(chunk_files(parts)) == [TRAIN_CHUNKS[0]]
    before = chunk_files(parts)
    out = save_features(tmp_path, "s.pt", kill_rank=0)
    assert out.returncode == -9
    after = chunk_files(parts)
    assert sorted(after) == TRAIN_CHUNKS[:2] and after[TRAIN_CHUNKS[0]] == before[TRAIN_CHUNKS[0]]
    out = save_features(tmp_path, "s.pt")
    assert out.returncode == 0, out.stderr
    assert_same_cache(load(tmp_path / "s.pt"), reference, world_size=1)
    assert torch.equal(load(tmp_path / "s.pt")["train"], reference["train"])  # one process: bit for bit


def test_a_chunk_of_another_extraction_is_not_reused(tmp_path):
    identity = dict(model="m", dataset="digits", split="train", rows=10, image_size=16, precision="fp32")
    rows, path = torch.arange(4, 8), tmp_path / "train-00001-of-00003.pt"
    atomic_save({"identity": identity, "rows": rows, "features": torch.ones(4, 3)}, path)
    assert torch.equal(load_chunk(path, identity, rows), torch.ones(4, 3))
    for change in ({"model": "other"}, {"image_size": 32}, {"precision": "bf16"}, {"dataset": "cifar10"}):
        assert load_chunk(path, dict(identity, **change), rows) is None, change
    assert load_chunk(path, identity, torch.arange(3, 7)) is None  # other rows (another --chunk_rows)
    path.write_bytes(b"torn")
    assert load_chunk(path, identity, rows) is None
    assert load_chunk(tmp_path / "missing.pt", identity, rows) is None


def test_device_map_is_refused_for_a_timm_model(tmp_path):
    out = save_features(tmp_path, "x.pt", args=["--device_map=auto"])
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == ("error: --device_map=auto is for Hugging Face models and efficientnet_lite2 is not one; "
                          "leave --device_map unset\n")


def test_device_map_is_refused_under_torchrun():
    with pytest.raises(UserError, match=r"^--device_map=auto spreads one model .* use one or the other$"):
        check_device_map(resolve_model("all-MiniLM-L6-v2"), "auto", World(rank=0, size=2))


def test_device_map_without_accelerate_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(UserError, match=r"^--device_map=auto needs the package accelerate: pip install accelerate$"):
        check_device_map(resolve_model("all-MiniLM-L6-v2"), "auto", World())
