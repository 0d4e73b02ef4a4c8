"""`tiny_bert`: the offline text student, a small BERT from random weights."""
from aft.errors import UserError
from aft.models.base import ModelSpec
from aft.models.hf import HFFeatures, minilm_path, text_inputs


def tiny_bert_spec(name):
    """A 2-layer, 128-wide BERT from random weights on the MiniLM tokenizer: the offline text student."""

    def build(pretrained, dtype=None):
        import transformers
        if pretrained:
            raise UserError(f"{name} has no pre-trained weights; drop --init_model")
        config = transformers.BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=512, max_position_embeddings=512)
        return HFFeatures(transformers.BertModel(config), "pooler"), 128

    def make_inputs(raw, task, image_size=None):
        return text_inputs(raw, task, minilm_path())

    return ModelSpec(name, "text", build, make_inputs)
