"""The paper's Hugging Face text sets (GLUE, SuperGLUE's BoolQ, IMDB), each row written into the
paper code's prompt.

A set is read from `{data folder}/{name}` when one was saved there with `DatasetDict.save_to_disk`
(for a machine that has no hub cache), else from the Hugging Face `datasets` cache
(`HF_DATASETS_CACHE`, or `HF_HOME`/datasets), which a run with a network fills.
"""
import os
from functools import partial

import torch

from aft.datasets.base import Split, Task, register_dataset
from aft.datasets.decode import data_root, offline, offline_reason
from aft.errors import UserError, first_line
from aft.models.hub import check_hub

# name: (hub repo, config, train split, test split, classes, prompt, truncation side, step multiplier).
# Prompts and truncation sides are the paper code's, so that scores compare with the paper's; wnli has
# none there (its loader was missing), so it takes rte's, the same sentence-pair entailment question.
GLUE = "nyu-mll/glue"
ENTAIL = "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nDoes Sentence 1 entail Sentence 2? Answer: "
HF_TEXT = {
    "imdb": ("stanfordnlp/imdb", None, "train", "test", 2,
             "{text}Overall, the sentiment of my review is", "left", 1),
    "boolq": ("aps/super_glue", "boolq", "train", "validation", 2,
              "Question: {question}\nReference: {passage}\nAnswer: ", "left", 1),
    "mnli": (GLUE, "mnli", "train", "validation_matched", 3,
             "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis? Answer: ",
             "left", 4),
    "mrpc": (GLUE, "mrpc", "train", "validation", 2,
             "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nIs Sentence 1 equivalent to Sentence 2? Answer: ",
             "left", 1),
    "sst2": (GLUE, "sst2", "train", "validation", 2, 'Review: "{sentence}"\nSentiment: ', "left", 1),
    "cola": (GLUE, "cola", "train", "validation", 2, 'Is the sentence "{sentence}" grammatical? Answer: ', "left", 1),
    "qnli": (GLUE, "qnli", "train", "validation", 2,
             "Question: {question}\nSentence: {sentence}\nDoes the sentence answer the question? Answer: ",
             "right", 4),
    "rte": (GLUE, "rte", "train", "validation", 2, ENTAIL, "left", 1),
    "wnli": (GLUE, "wnli", "train", "validation", 2, ENTAIL, "left", 1),
    "qqp": (GLUE, "qqp", "train", "validation", 2,
            "Question 1: {question1}\nQuestion 2: {question2}\nAre Question 1 and Question 2 equivalent? Answer: ",
            "left", 4),
}


def hf_split(name, repo, config, split, root):
    """One split of a Hugging Face dataset: from {root}/{name} (save_to_disk) if there, else the hub
    cache (downloading it when online)."""
    import datasets
    local = os.path.join(root, name)
    if os.path.isdir(local):
        try:
            saved = datasets.load_from_disk(local)
            return saved[split] if isinstance(saved, datasets.DatasetDict) else saved
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{local} is not a Hugging Face dataset saved with save_to_disk holding split "
                            f"{split!r} ({first_line(e)}); save it again or remove it") from e
    check_hub()
    try:
        return datasets.load_dataset(repo, config, split=split)
    except (OSError, ValueError) as e:  # offline: ConnectionError; not on the hub / no such config: others
        from datasets.config import HF_DATASETS_CACHE
        args = f"'{repo}'" + (f", '{config}'" if config else "")
        state = f"offline ({offline_reason()}) and not" if offline() else "not"
        raise UserError(f"dataset {name} (Hugging Face {repo}{' ' + config if config else ''}): {state} in the "
                        f"datasets cache {HF_DATASETS_CACHE} ({first_line(e, 120)}); download it once with a network "
                        f"(python -c \"import datasets; datasets.load_dataset({args})\"; HF_HOME or HF_DATASETS_CACHE "
                        f"say where the cache is), or put it in {local} with DatasetDict.save_to_disk") from e


def hf_labels(ds):
    """A Hugging Face split's labels as int64."""
    for column in ("label", "answer"):  # super_glue/glue: label; google/boolq: answer (bool)
        if column in ds.column_names:
            return torch.as_tensor([int(v) for v in ds[column]], dtype=torch.long)
    raise UserError(f"dataset has no label column (columns: {', '.join(ds.column_names)})")


def _text_split(name, split):
    repo, config, *_, prompt, _side, _mult = HF_TEXT[name]
    fields = [f for f in ("text", "question", "passage", "premise", "hypothesis", "sentence1", "sentence2",
                          "sentence", "question1", "question2") if "{" + f + "}" in prompt]
    columns = {f: split[f] for f in fields}
    texts = [prompt.format(**dict(zip(fields, row))) for row in zip(*columns.values())]
    labels = hf_labels(split)
    keep = labels >= 0  # GLUE's unlabelled test rows carry -1; the splits used here have none
    if not bool(keep.all()):
        texts = [t for t, k in zip(texts, keep.tolist()) if k]
        labels = labels[keep]
    return Split(texts, labels)


def _class_names(ds, num_classes):
    feature = ds.features.get("label") if hasattr(ds, "features") else None
    names = getattr(feature, "names", None)
    return list(names) if names and len(names) == num_classes else [str(i) for i in range(num_classes)]


def _text_task(name, data_dir, decode_size=None):
    repo, config, train_split, test_split, num_classes, _prompt, side, mult = HF_TEXT[name]
    root = data_root(data_dir)
    train = hf_split(name, repo, config, train_split, root)
    test = hf_split(name, repo, config, test_split, root)
    return Task(name, "text", num_classes, _text_split(name, train), _text_split(name, test),
                truncation_side=side, step_multiplier=mult, class_names=_class_names(train, num_classes))


for _name in HF_TEXT:
    register_dataset(_name, modality="text")(partial(_text_task, _name))
