"""Write small datasets of the three own-data forms from the embedded data, offline, to try
README's "Your own data" on:

    python examples/make_own_data.py [FOLDER]      # default: own_data

FOLDER/digits/        scikit-learn's digits as PNG pictures: train/CLASS/*.png, test/CLASS/*.png
FOLDER/tweets.csv     4,000 of the embedded tweets: text, sentiment (negative, neutral, positive)
FOLDER/tweets_hf/     the same tweets as a Hugging Face DatasetDict (train, validation, test), saved
                      with save_to_disk
"""
import csv
import os
import sys

import numpy as np


def main(folder="own_data"):
    from PIL import Image
    from aft.datasets import load_task
    digits = load_task("digits")
    for split in ("train", "test"):
        images, labels = getattr(digits, split).inputs, getattr(digits, split).labels
        for i, (image, label) in enumerate(zip(images, labels.tolist())):
            path = os.path.join(folder, "digits", split, str(label), f"{i:04d}.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(image[0].numpy().astype(np.uint8)).save(path)
    tweets = load_task("tweets")
    rows = [(text, tweets.class_names[label]) for text, label in zip(tweets.train.inputs, tweets.train.labels.tolist())]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[:4000]]
    with open(os.path.join(folder, "tweets.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "sentiment"])
        writer.writerows(rows)
    import datasets
    cut = {"train": rows[:3000], "validation": rows[3000:3500], "test": rows[3500:]}
    datasets.DatasetDict({split: datasets.Dataset.from_dict({"text": [t for t, _ in part],
                                                            "label": [s for _, s in part]})
                          for split, part in cut.items()}).save_to_disk(os.path.join(folder, "tweets_hf"))
    print(f"wrote {folder}/digits/ (1,437 + 360 pictures), {folder}/tweets.csv (4,000 rows), "
          f"{folder}/tweets_hf/ (3,000 / 500 / 500)")


if __name__ == "__main__":
    main(*sys.argv[1:])
