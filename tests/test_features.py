"""The feature cache: round trip, atomic writes, and every mismatch refused with a clear error."""
import hashlib
import os

import pytest
import torch

from aft.errors import UserError
from aft.features import feature_path, make_meta, read_features, write_features


def write(path, n_train=6, n_test=4, dim=3, model="m", dataset="d"):
    train, test = torch.randn(n_train, dim), torch.randn(n_test, dim)
    write_features(path, train, test, make_meta(model, dataset, train, test))
    return train, test


def test_round_trip(tmp_path):
    path = feature_path(str(tmp_path), "org/model", "d")
    assert path.endswith(os.path.join("org", "model_d.pt"))  # a '/' in the name makes a sub-folder
    train, test = write(path, model="org/model")
    cache = read_features(path, "org/model", "d", 6, 4)
    assert torch.equal(cache["train"], train) and torch.equal(cache["test"], test)
    assert cache["meta"]["dim"] == 3 and cache["meta"]["n_train"] == 6
    assert torch.load(path, weights_only=True)["meta"]["model"] == "org/model"


def test_crash_during_write_keeps_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "m_d.pt")
    train, _ = write(path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        write(path)
    monkeypatch.undo()
    assert torch.equal(read_features(path, "m", "d")["train"], train)
    assert sorted(os.listdir(tmp_path)) == [".m_d.pt.lock", "m_d.pt"]  # no temporary file left behind


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="other"), "holds features of model 'm', not 'other'"),
    (dict(dataset="other"), "holds features of dataset 'd', not 'other'"),
    (dict(n_train=7), "has 6 train rows but dataset d has 7"),
    (dict(n_test=5), "has 4 test rows"),
])
def test_mismatch_is_a_clear_error(tmp_path, kwargs, message):
    path = str(tmp_path / "m_d.pt")
    write(path)
    args = dict(model="m", dataset="d", n_train=6, n_test=4) | kwargs
    with pytest.raises(UserError, match=message) as e:
        read_features(path, **args)
    assert "save_features.py --model_class=" in str(e.value)


def test_missing_file_names_the_command(tmp_path):
    with pytest.raises(UserError, match=r"python save_features.py --model_class=m --dataset=d"):
        read_features(str(tmp_path / "m_d.pt"), "m", "d", features_dir=str(tmp_path))


def test_truncated_file_is_refused(tmp_path):
    path = str(tmp_path / "m_d.pt")
    write(path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable feature file"):
        read_features(path, "m", "d")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "m_d.pt")
    torch.save({"train": torch.zeros(1, 1), "test": torch.zeros(1, 1), "meta": Evil()}, path, pickle_protocol=2)
    with pytest.raises(UserError, match="not a readable feature file"):
        read_features(path, "m", "d")
    assert not os.path.exists(tmp_path / "pwned.txt")


def test_nan_features_are_refused(tmp_path):
    path = str(tmp_path / "m_d.pt")
    train, test = torch.randn(6, 3), torch.randn(4, 3)
    train[2, 1] = float("nan")
    write_features(path, train, test, make_meta("m", "d", train, test))
    with pytest.raises(UserError, match="NaN or inf train features"):
        read_features(path, "m", "d")


def test_a_local_model_folder_is_cached_inside_the_features_folder(tmp_path, monkeypatch):
    """A model given as a folder (absolute or relative, with or without a trailing /) gets a cache named
    by the folder's name and a hash of its real path inside --features_dir, never a file beside the
    model folder; its path is recorded in the meta. Two folders of one name get two files."""
    model_dir = tmp_path / "models" / "all-mpnet-base-v2"
    model_dir.mkdir(parents=True)
    (tmp_path / "other" / "all-mpnet-base-v2").mkdir(parents=True)
    features_dir = str(tmp_path / "features")
    digest = hashlib.sha256(os.path.realpath(model_dir).encode()).hexdigest()[:8]
    expected = os.path.join(features_dir, f"all-mpnet-base-v2-{digest}_tweets.pt")
    for name in (str(model_dir), f"{model_dir}/", f"local-dir:{model_dir}"):
        assert feature_path(features_dir, name, "tweets") == expected
    monkeypatch.chdir(tmp_path)
    assert feature_path(features_dir, "models/all-mpnet-base-v2", "tweets") == expected
    assert feature_path(features_dir, "other/all-mpnet-base-v2", "tweets") != expected
    # a Hugging Face id is no folder here: sub-folders, as the paper's cache
    assert feature_path("./features", "sentence-transformers/all-mpnet-base-v2", "tweets") == \
        os.path.join("./features", "sentence-transformers/all-mpnet-base-v2_tweets.pt")
    train, test = torch.zeros(3, 2), torch.zeros(1, 2)
    assert make_meta(str(model_dir), "tweets", train, test)["model_path"] == str(model_dir)
    assert "model_path" not in make_meta("gpt2", "tweets", train, test)


def test_a_sentence_model_cache_made_by_older_code_is_refused(tmp_path):
    """MiniLM's features are its sentence-transformers embedding (mean pooling, then Normalize) and a
    cache says so; one that says nothing (made when it was mean-pooled without Normalize) or says
    otherwise is refused with the command that makes it again, never read as today's features."""
    from aft.features import expected_features
    described = expected_features("all-MiniLM-L6-v2")
    assert described == "sentence-transformers embedding: mean pooling, normalised, at most 256 tokens"
    assert expected_features("resnet10t") is None and expected_features("made_elsewhere") is None
    path = feature_path(str(tmp_path), "all-MiniLM-L6-v2", "tweets")
    write(path, model="all-MiniLM-L6-v2", dataset="tweets")
    with pytest.raises(UserError, match="made as older code made them .*not as its sentence-transformers embedding: "
                                        "mean pooling, normalised.*create it again with: python save_features.py "
                                        "--model_class=all-MiniLM-L6-v2 --dataset=tweets"):
        read_features(path, "all-MiniLM-L6-v2", "tweets")
    train, test = torch.randn(6, 3), torch.randn(4, 3)
    write_features(path, train, test, make_meta("all-MiniLM-L6-v2", "tweets", train, test, features=described))
    assert torch.equal(read_features(path, "all-MiniLM-L6-v2", "tweets")["train"], train)
