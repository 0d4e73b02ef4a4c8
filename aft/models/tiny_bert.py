"""`tiny_bert`: the offline text student, a small BERT from random weights."""
from aft.errors import UserError
from aft.models.base import ModelSpec
from aft.models.hf import minilm_path, text_inputs, text_model


def tiny_bert_spec(name):
    """A 2-layer, 128-wide BERT from random weights on the MiniLM tokenizer: the offline text student.
    As a downstream model it is transformers' BertForSequenceClassification of that config, like any
    BERT (its pooled output, the head's dropout, the head initialised by transformers)."""

    def build(pretrained, dtype=None, num_classes=0):
        import transformers
        if pretrained:
            raise UserError(f"{name} has no pre-trained weights; drop --init_model")
        config = transformers.BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=512, max_position_embeddings=512)
        return text_model(config, lambda cls, config, **load_args: cls.from_config(config), num_classes)

    def make_inputs(raw, task, image_size=None):
        return text_inputs(raw, task, minilm_path())

    return ModelSpec(name, "text", build, make_inputs)
