"""sentence-transformers models are pooled as their own modules say: their features are exactly what
`SentenceTransformer(folder).encode(texts, convert_to_tensor=True)` returns (the Pooling config's
modes, concatenated in the library's order; Normalize when listed; texts cut at max_seq_length), for
folders written here as the hub's models are (the older `pooling_mode_*` keys), folders saved by the
library itself (its newer `pooling_mode`), a hub id found only in the hub cache, and the embedded
all-MiniLM-L6-v2. A downstream model keeps that embedding as phi, under a new linear head.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

from aft.datasets import load_task
from aft.errors import UserError
from aft.extract import extract_to_cache
from aft.models import create_classifier, minilm_path, resolve_model
from tests.conftest import ROOT
from tests.test_families import TOL, assert_every_trained_parameter_gets_a_gradient, env, write_sst2

WIDTH = 32  # the tiny BERT's hidden size
LEGACY_KEYS = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens",
               "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
               "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A tiny random BertModel with the MiniLM tokenizer, saved by transformers."""
    import transformers
    folder = tmp_path_factory.mktemp("st") / "bert"
    tok = transformers.AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(
        vocab_size=tok.vocab_size, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("st_data")
    write_sst2(str(folder))
    return str(folder)


def hub_style_folder(bert, folder, modes, normalize, max_seq_length=None):
    """An ST model folder as the hub's are: the model at the root, modules.json with the types of
    `sentence_transformers.models`, 1_Pooling/config.json with the older pooling_mode_* keys, and
    Normalize listed without a folder of its own."""
    shutil.copytree(bert, folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    os.makedirs(folder / "1_Pooling")
    pooling = {"word_embedding_dimension": WIDTH, **{key: mode in modes for mode, key in LEGACY_KEYS.items()}}
    for name, content in (("modules.json", modules), ("1_Pooling/config.json", pooling),
                          ("sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})):
        with open(folder / name, "w") as f:
            json.dump(content, f)
    return str(folder)


def library_folder(bert, folder, modes, normalize):
    """An ST model folder saved by sentence-transformers itself (its newer `pooling_mode` config)."""
    modules = [Transformer(str(bert), max_seq_length=16), Pooling(WIDTH, pooling_mode=modes)]
    SentenceTransformer(modules=modules + ([Normalize()] if normalize else []), device="cpu").save(str(folder))
    return str(folder)


def encode(folder, texts):
    return SentenceTransformer(folder, device="cpu").encode(list(texts), convert_to_tensor=True)


def features(name, task, texts):
    """A pre-trained model's features of `texts`, in eval mode, all in one padded batch."""
    spec = resolve_model(name)
    body, dim = spec.build(pretrained=True)
    inputs = spec.make_inputs(texts, task)
    with torch.no_grad():
        out = body.eval()(inputs.batch(torch.arange(len(texts)), int(inputs.lengths.max())))
    assert out.shape == (len(texts), dim)
    return out


@pytest.mark.parametrize("modes, normalize, max_seq_length", [
    (("mean",), True, 8), (("cls",), False, None), (("max",), True, None), (("mean_sqrt_len_tokens",), False, None),
    (("weightedmean",), False, None), (("lasttoken",), True, 6), (("cls", "max", "mean"), True, None)])
def test_hub_style_folders_give_encode(bert, data, tmp_path, modes, normalize, max_seq_length):
    """Each pooling mode (several: concatenated in the library's order), with and without Normalize,
    truncated at max_seq_length (8 and 6 tokens cut most of these texts)."""
    folder = hub_style_folder(bert, tmp_path / "st", modes, normalize, max_seq_length)
    task = load_task("sst2", data)
    cache = extract_to_cache(resolve_model(folder), task, str(tmp_path / "features.pt"), batch_size=4,
                             device=torch.device("cpu"))
    for split in ("train", "test"):
        texts = getattr(task, split).inputs
        torch.testing.assert_close(cache[split], encode(folder, texts), **TOL)
    assert cache["train"].shape[1] == WIDTH * len(modes)
    if normalize:
        torch.testing.assert_close(cache["train"].norm(dim=1), torch.ones(len(task.train)))


@pytest.mark.parametrize("modes, normalize", [("max", True), (["mean", "cls"], False)])
def test_folders_saved_by_the_library_give_encode(bert, data, tmp_path, modes, normalize):
    """Its own save: the newer `pooling_mode` (one mode, or a list concatenated in its order)."""
    folder = library_folder(bert, tmp_path / "st", modes, normalize)
    task = load_task("sst2", data)
    texts = task.train.inputs
    torch.testing.assert_close(features(folder, task, texts), encode(folder, texts), **TOL)


@pytest.mark.slow
def test_save_features_of_a_hub_id_from_the_cache(bert, data, tmp_path):
    """`save_features.py --model_class=org/name` of an ST model that is only in the hub cache, offline."""
    folder = hub_style_folder(bert, tmp_path / "st", ("cls", "mean"), True)
    cache_dir, commit = tmp_path / "hub", "0" * 40
    repo = cache_dir / "models--aft-test--tiny-st"
    shutil.copytree(folder, repo / "snapshots" / commit)
    os.makedirs(repo / "refs")
    (repo / "refs" / "main").write_text(commit)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "save_features.py"), "--model_class=aft-test/tiny-st",
                           "--dataset=sst2", f"--data_dir={data}", "--batch_size=4"], cwd=tmp_path,
                          env=dict(env(), HF_HUB_CACHE=str(cache_dir)), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [path] = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "features") for f in files if f.endswith(".pt")]
    cache = torch.load(path, weights_only=True)
    task = load_task("sst2", data)
    torch.testing.assert_close(cache["test"], encode(folder, task.test.inputs), **TOL)
    # the cache says what its features are, so a cache of other features is never read as these
    assert cache["meta"]["features"] == "sentence-transformers embedding: cls+mean pooling, normalised"


def test_embedded_minilm_gives_encode():
    """The embedded all-MiniLM-L6-v2: mean pooling, then unit length, as its modules say."""
    task = load_task("tweets")
    texts = [task.train.inputs[i] for i in range(0, 4000, 250)]
    ours = features("all-MiniLM-L6-v2", task, texts)
    torch.testing.assert_close(ours, encode(minilm_path(), texts), **TOL)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(len(texts)))


def test_a_student_keeps_the_sentence_embedding(bert, data, tmp_path):
    """As a downstream model, phi is the sentence embedding (eval mode: encode's) under a new linear head."""
    folder = hub_style_folder(bert, tmp_path / "st", ("mean",), True)
    task = load_task("sst2", data)
    model, spec = create_classifier(folder, 3, pretrained=True)
    assert isinstance(model.head, torch.nn.Linear) and (model.head.in_features, model.head.out_features) == (WIDTH, 3)
    inputs = spec.make_inputs(task.test.inputs, task)
    idx = torch.arange(len(task.test))
    with torch.no_grad():
        _, phi = model.eval()(inputs.batch(idx, inputs.widths([idx])[0]))
    torch.testing.assert_close(phi, encode(folder, task.test.inputs), **TOL)
    assert_every_trained_parameter_gets_a_gradient(model.train(), inputs.batch(idx, inputs.widths([idx])[0]))


def test_unsupported_modules_are_one_line(bert, tmp_path):
    folder = hub_style_folder(bert, tmp_path / "st", ("mean",), True)
    with open(os.path.join(folder, "modules.json")) as f:
        modules = json.load(f)
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    with open(os.path.join(folder, "modules.json"), "w") as f:
        json.dump(modules, f)
    with pytest.raises(UserError, match="Transformer -> Pooling -> Dense -> Normalize") as err:
        resolve_model(folder).build(pretrained=True)
    assert "\n" not in str(err.value)
