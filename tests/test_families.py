"""Every model family end to end, on tiny randomly initialised models saved in local folders.

Text: BERT, DistilBERT, RoBERTa, GPT-2, T5, LLaMA (transformers configs, saved with save_pretrained
together with a tokenizer); images: ViT, ResNet, MLP-Mixer, ResNetV2 (BiT) (timm, pretrained=False,
saved with timm's save_for_hf). Each folder goes through save_features.py as the model name, and the
cached features are checked against what the family's classification head reads, computed here
independently: a forward pre-hook on the head of transformers' own `...ForSequenceClassification`
model fed one unpadded example at a time (BERT: the pooled output; DistilBERT: after pre_classifier
and ReLU; RoBERTa: <s>; GPT-2 and LLaMA: the last token; T5: the decoder state at EOS), and for timm
`model.forward_head(model.forward_features(x), pre_logits=True)` of the full model. A student's phi
is checked against the input of the last linear layer of that same classifier (RoBERTa's and T5's
`out_proj`, after their head's dense and tanh), and its head against the one the library builds and
initialises. run.py then trains a text and an image student from such folders (--init_model) against
the others' caches.
"""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from aft.datasets import load_task
from aft.features import feature_path
from aft.errors import UserError
from aft.models import create_classifier, minilm_path, resolve_model
from tests.conftest import PYTHON, ROOT, pixels
from tests.test_paper_datasets import write_dtd

TEXT_FAMILIES = ["bert", "distilbert", "roberta", "gpt2", "t5", "llama"]
IMAGE_FAMILIES = ["vit", "resnet", "mixer", "resnetv2"]
WORDS = "the a movie film was is good bad great terrible plot actors boring fun very not".split()
TEXT_STUDENT, TEXT_TEACHERS = "gpt2", ["bert", "t5"]
IMAGE_STUDENT, IMAGE_TEACHERS = "vit", ["resnetv2", "mixer"]

# Batch composition and thread count change the order of float sums: features agree to ~1e-5,
# while a wrong layer or token differs by O(1).
TOL = dict(atol=1e-4, rtol=1e-4)


def env():
    return dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")


def start(script, *args, cwd):
    return subprocess.Popen([PYTHON, os.path.join(ROOT, script), *args], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs):
    out = {}
    for key, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        out[key] = (proc.returncode, stdout, stderr)
    return out


# ---- the fixtures: a tiny sst2, a tiny dtd, ten model folders ------------------------------------

def write_sst2(data_dir):
    import datasets
    rng = np.random.default_rng(0)
    features = datasets.Features({"sentence": datasets.Value("string"), "idx": datasets.Value("int32"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})

    def split(n):
        sentences = [" ".join(rng.choice(WORDS, rng.integers(1, 12))) for _ in range(n)]
        return datasets.Dataset.from_dict({"sentence": sentences, "idx": list(range(n)),
                                           "label": [i % 2 for i in range(n)]}, features=features)
    datasets.DatasetDict({"train": split(14), "validation": split(7)}).save_to_disk(os.path.join(data_dir, "sst2"))


def word_tokenizer(specials, template=None, **special_tokens):
    """A word-level tokenizer over the fixture's words (built offline with `tokenizers`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {t: i for i, t in enumerate(specials)}
    for w in WORDS + ["Review", "Sentiment", ":", '"']:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if template:
        tok.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(t, vocab[t]) for t in specials if t in template])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", model_max_length=64, **special_tokens)


def build_text_family(family, folder):
    import transformers as T
    torch.manual_seed(0)
    small = dict(num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if family in ("bert", "distilbert"):  # the real WordPiece tokenizer of the embedded MiniLM
        tok = T.AutoTokenizer.from_pretrained(minilm_path())
        if family == "bert":
            model = T.BertForSequenceClassification(T.BertConfig(vocab_size=tok.vocab_size, hidden_size=32,
                                                                 max_position_embeddings=64, **small))
        else:
            model = T.DistilBertForSequenceClassification(T.DistilBertConfig(
                vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64))
    elif family == "roberta":
        tok = word_tokenizer(["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>", bos_token="<s>", eos_token="</s>",
                             pad_token="<pad>", cls_token="<s>", sep_token="</s>")
        model = T.RobertaForSequenceClassification(T.RobertaConfig(
            vocab_size=len(tok), hidden_size=32, max_position_embeddings=68, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, type_vocab_size=1, **small))
    elif family == "gpt2":  # no pad token, as GPT-2's: padding uses EOS and the attention mask
        tok = word_tokenizer(["<|endoftext|>", "<unk>"], eos_token="<|endoftext|>", bos_token="<|endoftext|>")
        model = T.GPT2ForSequenceClassification(T.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32,
                                                             n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0))
    elif family == "t5":
        tok = word_tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", eos_token="</s>", pad_token="<pad>")
        model = T.T5ForSequenceClassification(T.T5Config(
            vocab_size=len(tok), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    else:  # llama: BOS prepended, no pad token
        tok = word_tokenizer(["<unk>", "<s>", "</s>"], "<s> $A", bos_token="<s>", eos_token="</s>")
        model = T.LlamaForSequenceClassification(T.LlamaConfig(
            vocab_size=len(tok), hidden_size=32, num_key_value_heads=2, max_position_embeddings=64,
            bos_token_id=1, eos_token_id=2, **small))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


TIMM_ARCH = {  # family: (timm architecture, size-reducing arguments its constructor accepts)
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)),
    "resnet": ("resnet10t", {}),
    "mixer": ("mixer_s32_224", dict(img_size=32, mlp_ratio=(0.5, 1.0))),
    "resnetv2": ("resnetv2_50x1_bit", dict(channels=(128, 256, 512, 1024))),  # BiT: StdConv + GroupNorm(32)
}


def build_image_family(family, folder):
    import timm
    from timm.models import save_for_hf
    arch, args = TIMM_ARCH[family]
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=3, **args)
    save_for_hf(model, folder, model_args=args, safe_serialization=True, data_config={"input_size": (3, 32, 32)})


class Zoo:
    pass


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    z = Zoo()
    z.root = tmp_path_factory.mktemp("families")
    z.data = str(z.root / "data")
    write_sst2(z.data)
    write_dtd(z.data, n_train=3, n_test=2)
    z.folders = {}
    for family in TEXT_FAMILIES + IMAGE_FAMILIES:
        z.folders[family] = str(z.root / family)
        (build_text_family if family in TEXT_FAMILIES else build_image_family)(family, z.folders[family])
    z.dataset = {f: "sst2" if f in TEXT_FAMILIES else "dtd" for f in z.folders}
    z.features = {f: feature_path("./features", d, z.dataset[f]) for f, d in z.folders.items()}
    z.saved = finish({f: start("save_features.py", f"--model_class={d}", f"--dataset={z.dataset[f]}",
                               f"--data_dir={z.data}", "--batch_size=4", cwd=z.root)
                      for f, d in z.folders.items()})
    common = ["--method=aft", "--prec=1", "--steps=3", "--eval_steps=3", "--batch_size=4", "--lr=1e-3",
              f"--data_dir={z.data}", "--run_name={}"]
    runs = {}
    for name, student, teachers, ds in (("text", TEXT_STUDENT, TEXT_TEACHERS, "sst2"),
                                        ("image", IMAGE_STUDENT, IMAGE_TEACHERS, "dtd")):
        if all(z.saved[t][0] == 0 for t in teachers):
            args = [a.format(name) for a in common] + [
                f"--model_class={z.folders[student]}", f"--init_model={z.folders[student]}", f"--dataset={ds}",
                f"--pretrained_models={','.join(z.folders[t] for t in teachers)}"]
            runs[name] = start("run.py", *args, cwd=z.root)
    z.runs = finish(runs)
    return z


def cached(zoo, family):
    rc, out, err = zoo.saved[family]
    assert rc == 0, f"save_features.py failed for {family}:\n{out}\n{err}"
    path = zoo.features[family]
    assert f"saved {path}:" in out
    return torch.load(path if os.path.isabs(path) else zoo.root / path, weights_only=True)


# ---- text families ------------------------------------------------------------------------------

# The family's whole sequence-classification head (what an extractor's features feed), and the head's
# last linear layer (what the paper's code takes out of a downstream model, whose phi is its input).
WHOLE_HEAD = {"bert": "classifier", "distilbert": "classifier", "roberta": "classifier", "gpt2": "score",
              "llama": "score", "t5": "classification_head"}
LAST_LINEAR = dict(WHOLE_HEAD, roberta="classifier.out_proj", t5="classification_head.out_proj")


def head_input_per_example(family, folder, texts, layers=WHOLE_HEAD):
    """What the family's own sequence classifier hands the layer `layers[family]` of its head, one
    unpadded example at a time (of the token the head reads, where that layer gets every token)."""
    import transformers
    full = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    seen = {}
    full.get_submodule(layers[family]).register_forward_pre_hook(lambda module, args: seen.__setitem__("x", args[0]))
    rows = []
    with torch.no_grad():
        for text in texts:
            full(input_ids=torch.tensor([tok(text)["input_ids"]]))
            x = seen["x"][0]
            if x.dim() == 2:  # every token: RoBERTa's head reads <s>, GPT-2's and LLaMA's the last token
                x = x[0] if family == "roberta" else x[-1]
            rows.append(x)
    return torch.stack(rows)


@pytest.mark.slow
@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_text_features_are_the_head_input(zoo, family):
    cache = cached(zoo, family)
    task = load_task("sst2", zoo.data)
    assert cache["train"].shape == (14, 32) and cache["test"].shape == (7, 32)
    for split in ("train", "test"):
        ref = head_input_per_example(family, zoo.folders[family], getattr(task, split).inputs)
        torch.testing.assert_close(cache[split], ref, **TOL)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_last_token_with_left_and_right_padding(zoo, family):
    """Decoder-only LMs: the feature is the last non-pad token whichever side the padding is on
    (position ids follow the real tokens, so left padding shifts nothing)."""
    spec = resolve_model(zoo.folders[family])
    body, _ = spec.build(pretrained=True)
    body.eval()
    texts = ["the movie was good", "bad", "a very very boring plot not fun"]
    ref = head_input_per_example(family, zoo.folders[family], texts)
    task = load_task("sst2", zoo.data)
    inputs = spec.make_inputs(texts, task)
    right = inputs.batch(torch.arange(3), int(inputs.lengths.max()))
    ids, mask = right["input_ids"], right["attention_mask"]
    assert (mask.sum(1) < ids.shape[1]).any()  # the batch really is padded
    left_ids, left_mask = torch.full_like(ids, 7), torch.zeros_like(mask)  # any pad id: it is masked
    for i, n in enumerate(mask.sum(1).tolist()):
        left_ids[i, ids.shape[1] - n:], left_mask[i, ids.shape[1] - n:] = ids[i, :n], 1
    with torch.no_grad():
        torch.testing.assert_close(body(right), ref, **TOL)
        torch.testing.assert_close(body({"input_ids": left_ids, "attention_mask": left_mask}), ref, **TOL)


@pytest.mark.parametrize("family", TEXT_FAMILIES + IMAGE_FAMILIES)
def test_init_model_loads_every_layer_but_the_head(zoo, family):
    """A student from --init_model (eval mode): its phi is the input of the last linear layer of the
    family's own classifier loaded from the folder (for timm, and the text families whose head is one
    linear layer, the pre-trained feature; RoBERTa and T5 after their head's dense and tanh); its head
    is new, of the task's size; without --init_model phi differs (random weights)."""
    cache = cached(zoo, family)
    model, spec = create_classifier(zoo.folders[family], 5, pretrained=True)
    task = load_task(zoo.dataset[family], zoo.data, spec.pixels())  # decoded as save_features.py did
    assert isinstance(model.head, torch.nn.Linear) and model.head.out_features == 5
    assert model.head.in_features == cache["train"].shape[1]
    model.eval()
    inputs = spec.make_inputs(task.test.inputs, task)
    idx = torch.arange(len(task.test))
    with torch.no_grad():
        logits, phi = model(inputs.batch(idx, inputs.widths([idx])[0]))
        assert logits.shape == (len(task.test), 5)
        expected = cache["test"] if family in IMAGE_FAMILIES else head_input_per_example(
            family, zoo.folders[family], task.test.inputs, LAST_LINEAR)
        torch.testing.assert_close(phi, expected, **TOL)
        if family in ("roberta", "t5"):  # phi is no longer the extractor's feature
            assert not torch.allclose(phi, cache["test"], atol=1e-3)
        scratch, _ = create_classifier(zoo.folders[family], 5, pretrained=False)
        assert not torch.allclose(scratch.eval()(inputs.batch(idx, inputs.widths([idx])[0]))[1], phi, atol=1e-3)


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_text_student_is_the_familys_own_classifier(zoo, family):
    """A text student is transformers' own ...ForSequenceClassification for the task's classes, split
    at its head's last linear layer: from random weights, the same model as transformers builds from the
    same seed (every weight, the head included); from --init_model with the folder's own number of
    classes, the folder's head is loaded, as from_pretrained(num_labels=) does."""
    import transformers
    folder = zoo.folders[family]
    torch.manual_seed(1)
    model, _ = create_classifier(folder, 5, pretrained=False)
    torch.manual_seed(1)
    full = transformers.AutoModelForSequenceClassification.from_config(
        transformers.AutoConfig.from_pretrained(folder, num_labels=5))
    theirs = {**{f"body.model.{k}": v for k, v in full.base_model.state_dict().items()},  # under our names
              **{f"head.{k}": v for k, v in full.get_submodule(LAST_LINEAR[family]).state_dict().items()}}
    ours = model.state_dict()
    assert set(theirs) <= set(ours)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    if family in ("roberta", "t5"):  # the head's dense layer, before out_proj, is part of the body
        assert torch.equal(model.body.after_pool.dense.weight, full.get_submodule(WHOLE_HEAD[family]).dense.weight)
    saved = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    loaded, _ = create_classifier(folder, saved.config.num_labels, pretrained=True)
    assert torch.equal(loaded.head.weight, saved.get_submodule(LAST_LINEAR[family]).weight)


def test_fresh_heads_follow_the_architectures_init(zoo):
    """A new head is initialised as its architecture defines: BERT normal(0, initializer_range) with a
    zero bias; T5 normal(0, initializer_factor * d_model ** -0.5), zero bias; GPT-2 normal(0,
    initializer_range) without a bias (transformers' _init_weights); timm's ViT trunc_normal(std=.02),
    zero bias (init_weights_vit_timm); Mixer all zeros (its _init_weights for `head`); BiT's 1x1
    Conv2d normal(0, .01), zero bias (resnetv2's _init_weights), as an nn.Linear of the same weights."""
    import timm
    import transformers
    n = 64  # classes: enough weights for a 10% estimate of the std

    def head(family):
        torch.manual_seed(0)
        return create_classifier(zoo.folders[family], n, pretrained=False)[0].head

    def config(family):
        return transformers.AutoConfig.from_pretrained(zoo.folders[family])

    bert, t5, gpt2 = head("bert"), head("t5"), head("gpt2")
    assert bert.weight.std().item() == pytest.approx(config("bert").initializer_range, rel=0.1)
    t5_config = config("t5")
    assert t5.weight.std().item() == pytest.approx(t5_config.initializer_factor * t5_config.d_model ** -0.5, rel=0.1)
    assert gpt2.bias is None and gpt2.weight.std().item() == pytest.approx(config("gpt2").initializer_range, rel=0.1)
    assert not bert.bias.any() and not t5.bias.any()
    vit = head("vit")
    assert vit.weight.std().item() == pytest.approx(0.02, rel=0.1) and not vit.bias.any()
    mixer = head("mixer")
    assert not mixer.weight.any() and not mixer.bias.any()
    bit = head("resnetv2")
    torch.manual_seed(0)
    conv = timm.create_model(f"local-dir:{zoo.folders['resnetv2']}", pretrained=False, num_classes=n).get_classifier()
    assert isinstance(conv, torch.nn.Conv2d) and isinstance(bit, torch.nn.Linear)
    assert torch.equal(bit.weight, conv.weight.flatten(1)) and torch.equal(bit.bias, conv.bias)
    assert bit.weight.std().item() == pytest.approx(0.01, rel=0.1) and not bit.bias.any()
    for family in IMAGE_FAMILIES:  # every timm head is the one timm builds for num_classes, from the same seed
        torch.manual_seed(0)
        theirs = timm.create_model(f"local-dir:{zoo.folders[family]}", pretrained=False, num_classes=n)
        torch.testing.assert_close(head(family).weight, theirs.get_classifier().weight.flatten(1), rtol=0, atol=0)


def test_student_head_layers_keep_their_dropout(zoo):
    """The paper's phi is what the head's last linear layer reads in training too: after the dropout
    of BERT's and DistilBERT's heads (hidden_dropout_prob, seq_classif_dropout) and RoBERTa's (its
    classifier dropout, applied before and after the dense layer); GPT-2's head has none."""
    for family, p in (("bert", [0.1]), ("distilbert", [0.2]), ("gpt2", []), ("roberta", [0.1])):
        model, _ = create_classifier(zoo.folders[family], 2, pretrained=False)
        assert [m.p for m in model.body.after_pool.modules() if isinstance(m, torch.nn.Dropout)] == p, family


# ---- image families ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_image_features_are_pre_logits(zoo, family):
    import timm
    cache = cached(zoo, family)
    spec = resolve_model(zoo.folders[family])
    # save_features.py decoded the pictures at the side the model resizes them to
    assert cache["meta"]["decoded_size"] == spec.pixels() > 32  # its 32 px input over its crop fraction
    task = load_task("dtd", zoo.data, spec.pixels())
    full = timm.create_model(f"local-dir:{zoo.folders[family]}", pretrained=True).eval()  # with its classifier
    assert full.num_classes == 3
    for split in ("train", "test"):
        raw = getattr(task, split).inputs
        x = spec.make_inputs(raw, task).batch(torch.arange(len(raw)))
        assert x.shape[-1] == 32  # the folder's own data config
        with torch.no_grad():
            ref = full.forward_head(full.forward_features(x), pre_logits=True)
        torch.testing.assert_close(cache[split], ref, atol=1e-4, rtol=1e-3)  # batched by 4 vs all at once


def test_image_preprocessing_is_timms_eval_transform(zoo):
    """ImageInputs on a square image = timm's own eval transform for the model's data config (resize to
    size / crop_pct with its interpolation, centre crop, mean and std), up to PIL's rounding to uint8."""
    import timm
    from PIL import Image
    full = timm.create_model(f"local-dir:{zoo.folders['vit']}", pretrained=False)
    cfg = timm.data.resolve_model_data_config(full)
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.9
    transform = timm.data.create_transform(**cfg, is_training=False)
    pixels = (np.random.default_rng(1).random((1, 80, 80, 3)) * 255).astype(np.uint8)
    spec = resolve_model(zoo.folders["vit"])
    spec.build(pretrained=False)
    ours = spec.make_inputs(torch.from_numpy(pixels).permute(0, 3, 1, 2), None).batch(torch.tensor([0]))[0]
    theirs = transform(Image.fromarray(pixels[0]))
    assert ours.shape == theirs.shape == (3, 32, 32)
    assert (ours - theirs).abs().max() < 2.5 / 255 / 0.5  # within a couple of uint8 steps


# ---- run.py with family students ---------------------------------------------------------------

@pytest.mark.parametrize("kind, student, teachers, n_train, n_test", [
    ("text", TEXT_STUDENT, TEXT_TEACHERS, 14, 7), ("image", IMAGE_STUDENT, IMAGE_TEACHERS, 9, 6)])
def test_run_trains_a_family_student(zoo, kind, student, teachers, n_train, n_test):
    assert kind in zoo.runs, f"no run: a teacher's save_features.py failed: {[zoo.saved[t] for t in teachers]}"
    rc, out, err = zoo.runs[kind]
    assert rc == 0, f"run.py failed:\n{out}\n{err}"
    res = json.load(open(zoo.root / "results" / f"{kind}.json"))
    assert res["config"]["init_model"] == zoo.folders[student] and res["n_train"] == n_train
    assert res["n_eval"] == n_test and [e["step"] for e in res["evals"]] == [3]
    assert res["evals"][0]["reg"] > 0 and 0 <= res["final_acc"] <= 1


# ---- CLIP ResNet-50 (SNLI-VE) ---------------------------------------------------------------------

@pytest.mark.slow
def test_clip_features_are_the_outer_product(tmp_path):
    """CLIP's feature is image embedding (x) text embedding, 1024 x 1024, as the paper's CLIP model (kept
    as its two factors), and its head is the paper's linear layer on that product; its pictures are
    preprocessed like open_clip's own transform (bicubic, 224, CLIP mean/std)."""
    open_clip = pytest.importorskip("open_clip")
    from PIL import Image
    from tests.test_paper_datasets import write_snli_ve
    write_snli_ve(str(tmp_path))
    task = load_task("snli-ve", str(tmp_path))
    model, spec = create_classifier("CLIP", 3, pretrained=False)
    assert spec.modality == "image_text" and model.head.in_features == 1024 * 1024
    model.eval()
    inputs = spec.make_inputs(task.test.inputs, task)
    batch = inputs.batch(torch.tensor([0, 2]))
    assert batch["image"].shape == (2, 3, 224, 224) and batch["text"].shape == (2, 77)
    with torch.no_grad():
        logits, phi = model(batch)
        image = model.body.clip.encode_image(batch["image"])
        text = model.body.clip.encode_text(open_clip.get_tokenizer("RN50")(["Two people.", "A car."]))
    outer = (image[:, :, None] * text[:, None, :]).reshape(2, -1)
    torch.testing.assert_close(phi.flatten(), outer, **TOL)
    weight = model.head.weight.reshape(3, -1)
    torch.testing.assert_close(logits, outer @ weight.T + model.head.bias, **TOL)
    preprocess = open_clip.image_transform(224, is_train=False, interpolation="bicubic", resize_mode="shortest")
    picture = Image.fromarray(pixels(task.test.inputs.images)[task.test.inputs.index[2]].permute(1, 2, 0).numpy())
    assert (preprocess(picture) - batch["image"][1]).abs().max() < 0.05
    assert_every_trained_parameter_gets_a_gradient(model.train(), batch)


def assert_every_trained_parameter_gets_a_gradient(model, batch):
    """Data-parallel training (DistributedDataParallel) stops at the second step on a trained parameter
    that the loss never reaches, so a downstream model has none (CLIP's logit scale, a pooler that a
    sentence-transformers embedding does not use)."""
    logits, _ = model(batch)
    logits.sum().backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused



@pytest.mark.slow
def test_clip_student_trains_on_snli_ve(tmp_path, monkeypatch):
    """The paper's SNLI-VE setup: CLIP as the downstream model, AFT towards an image model's features
    of the pictures and a text model's features of the hypotheses (both computed on the spot)."""
    pytest.importorskip("open_clip")
    from aft.config import Config
    from aft.experiment import run
    from tests.test_paper_datasets import write_snli_ve
    write_snli_ve(str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    res = run(Config(model_class="CLIP", dataset="snli-ve", data_dir="data", method="aft", steps=2, eval_steps=2,
                     batch_size=2, pretrained_models="efficientnet_lite2,all-MiniLM-L6-v2", run_name="clip"))
    assert res.n_train == 5 and res.n_eval == 3 and [e["step"] for e in res.evals] == [2]
    dims = [torch.load(tmp_path / "features" / f"{m}_snli-ve.pt", weights_only=True)["train"].shape
            for m in ("efficientnet_lite2", "all-MiniLM-L6-v2")]
    assert dims == [(5, 1280), (5, 384)]


# ---- large extractors: the batch size adapts to GPU memory --------------------------------------

def test_extraction_halves_the_batch_on_out_of_memory(capsys):
    """A batch that does not fit (torch.OutOfMemoryError) is retried at half the size until it fits;
    at one example it is a clear one-line error."""
    from aft.extract import compute_features_adaptive
    from aft.inputs import TextInputs
    from aft.models import load_tokenizer, minilm_path
    inputs = TextInputs([" ".join(["word"] * n) for n in range(1, 12)], load_tokenizer(minilm_path()))
    sizes = []

    class Body(torch.nn.Module):
        def __init__(self, fits):
            super().__init__()
            self.fits = fits

        def forward(self, batch):
            sizes.append(len(batch["input_ids"]))
            if len(batch["input_ids"]) > self.fits:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return batch["attention_mask"].float().sum(1, keepdim=True)

    feats, used = compute_features_adaptive(Body(3), inputs, 16, torch.device("cpu"), "fp32", "gpt2 imdb train")
    assert used == 2 and sizes[:2] == [11, 8] and torch.equal(feats[:, 0], inputs.lengths.float())
    assert "gpt2 imdb train: out of GPU memory; retrying with batch size 2" in capsys.readouterr().out
    with pytest.raises(UserError, match="out of GPU memory even one example at a time"):
        compute_features_adaptive(Body(0), inputs, 4, torch.device("cpu"), "fp32", "x")
