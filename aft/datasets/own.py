"""Your own data, given to --dataset by where it is: a folder of pictures, a table of texts, or any
Hugging Face dataset. The kind is read off the path (a prefix forces it where that is ambiguous):

  imagefolder:PATH, or a folder of pictures   train/CLASS/*.jpg|png|..., test/..., optional val/; or
                                              CLASS/*.jpg only, split by --test_frac and --split_seed
  table:PATH, or a .csv .tsv .jsonl .json     one file (split by --test_frac and --split_seed), or a
  .parquet file, or a folder of them          folder of train.csv, test.csv, optional val.csv
  hf:ID, or a folder saved by save_to_disk    a hub id (from the local cache offline) or a folder

The splits are --train_split, --test_split and the validation split (`val` or `validation` when there
is one, or --val_split), which --use_val evaluates on instead of holding out 10% of train. Labels
(--label_column; a picture's class folder) may be strings or integers: the classes are their sorted
values (integers numerically), and a test label never seen in training, a single class or a row
without a label is refused before any work. A text is --prompt filled with the row's columns, or the
--text_columns one per line; a Hugging Face image column (--image_column, default `image`) holds
bytes or paths, and with text columns too the rows are picture + text pairs, as SNLI-VE's.

A dataset is named in files and results by what it is, not by how its path was typed: the last part of
the path, then 8 hex digits of a hash of its kind, its real path (or hub id) and the options above, so
`a/b`, `a/b/` and `../x/a/b` share one feature cache and two folders called `b` never do. Its files'
names, sizes and times are its fingerprint, recorded with every feature cache and result: a cache of
other files is refused, and a changed folder is a new run.
"""
import csv
import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass
from functools import partial

import torch

from aft.datasets.base import DATASETS, DatasetEntry, Split, Task
from aft.datasets.decode import data_root, decoded_store, offline, offline_reason, open_picture
from aft.errors import UserError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
TABLE_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
VAL_NAMES = ("val", "validation")
SHOWN = 3  # offenders named in an error line; the rest are counted


# ---- what a name is -----------------------------------------------------------------------------------

def is_table_file(path):
    return os.path.isfile(path) and path.lower().endswith(TABLE_EXTENSIONS)


def is_saved_hf(path):
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in
                                       ("dataset_dict.json", "dataset_info.json", "state.json"))


def is_table_folder(path):
    return os.path.isdir(path) and any(is_table_file(os.path.join(path, f)) for f in os.listdir(path))


def looks_like_path(name):
    return os.sep in name or "/" in name or name.startswith((".", "~"))


@dataclass(frozen=True)
class OwnKind:
    """A kind of the researcher's own data, as the dataset registry's rules give it."""
    kind: str  # "imagefolder", "table" or "hf"
    prefix: str

    def resolve(self, name, options):
        where = name[len(self.prefix):] if name.startswith(self.prefix) else name
        hub_id = self.kind == "hf" and not looks_like_path(where) and not os.path.exists(where)
        if not hub_id:
            where = os.path.realpath(os.path.expanduser(where))
            if not os.path.exists(where):
                raise UserError(f"--dataset={name}: {where} does not exist")
        reader = {"imagefolder": ImageFolder, "table": Table, "hf": HFData}[self.kind](name, where, options)
        key = json.dumps(dict(kind=self.kind, where=where, options=options.changed()), sort_keys=True)
        stem = os.path.basename(where.rstrip("/")) or where
        stem = stem[:-len(os.path.splitext(stem)[1])] if stem.lower().endswith(TABLE_EXTENSIONS) else stem
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-") or self.kind
        canonical = f"{base}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
        given = " ".join([f"--dataset={shlex.quote(name)}"] + [f"--{k}={shlex.quote(str(v))}" for k, v in
                                                              options.changed().items()])
        return DatasetEntry(canonical, reader.modality, partial(reader.load, canonical), has_val=reader.val is not None,
                            decodes=reader.modality != "text", paper_decodes=reader.modality != "text", fingerprint=reader.fingerprint(), given=given)


class MissingPath:
    """A name that is a path to nothing."""

    @staticmethod
    def resolve(name, options):
        raise UserError(f"--dataset={name}: {os.path.realpath(os.path.expanduser(name))} does not exist (a dataset is "
                        f"a registered name, a folder, a table file, or hf:ID)")


IMAGEFOLDER, TABLE, HF = OwnKind("imagefolder", "imagefolder:"), OwnKind("table", "table:"), OwnKind("hf", "hf:")
DATASETS.rules += [
    (lambda name: name.startswith(IMAGEFOLDER.prefix), IMAGEFOLDER),
    (lambda name: name.startswith(TABLE.prefix), TABLE),
    (lambda name: name.startswith(HF.prefix), HF),
    (lambda name: is_table_file(os.path.expanduser(name)), TABLE),
    (lambda name: is_saved_hf(os.path.expanduser(name)), HF),
    (lambda name: is_table_folder(os.path.expanduser(name)), TABLE),
    (lambda name: os.path.isdir(os.path.expanduser(name)), IMAGEFOLDER),
    (looks_like_path, MissingPath),
]
DATASETS.valid = ("{registered}; or your own data: a folder of pictures (train/CLASS/*.jpg and test/..., or "
                  "CLASS/*.jpg), a table (.csv, .tsv, .jsonl, .json, .parquet: one file, or train.csv and test.csv "
                  "in a folder) or a Hugging Face dataset (hf:ID, or a folder saved with save_to_disk); the prefixes "
                  "imagefolder:, table: and hf: force the kind")


# ---- labels, splits, bad rows ---------------------------------------------------------------------------

def missing(value):
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and
                                                                             not value.strip())


def class_list(values):
    """The sorted classes of label values: integers (or strings of them) numerically, else as strings."""
    try:
        return sorted({int(str(v).strip()) for v in values})
    except ValueError:
        return sorted({str(v).strip() for v in values})


def label_key(value, classes):
    """A label value as the classes hold it (an integer where they are integers and it is one)."""
    text = str(value).strip()
    if classes and isinstance(classes[0], int):
        try:
            return int(text)
        except ValueError:
            pass
    return text


def refuse_bad(dataset, what, offenders, fix):
    """One line naming the first offenders (`where (why)`) and their count."""
    shown = ", ".join(offenders[:SHOWN]) + (f" and {len(offenders) - SHOWN} more" if len(offenders) > SHOWN else "")
    raise UserError(f"dataset {dataset}: {len(offenders)} {what}: {shown}; {fix}")


SKIP_FIX = "fix or remove them, or pass --skip_bad_rows=True to leave them out"


def drop_bad(dataset, rows, bad, options, what):
    """`rows` without the indices in `bad` ({index: 'where (why)'}), refused unless --skip_bad_rows."""
    if bad and not options.skip_bad_rows:
        refuse_bad(dataset, what, list(bad.values()), SKIP_FIX)
    return [r for i, r in enumerate(rows) if i not in bad]


def check_labels(dataset, splits, classes, where_of):
    """The classes must be two at least, and every label of the other splits one of the train split's."""
    if len(classes) < 2:
        raise UserError(f"dataset {dataset} has {'one class only' if classes else 'no labels'} "
                        f"({', '.join(map(str, classes))}) in its train split: a classifier needs two at least")
    known = set(classes)
    for split, labels in splits.items():
        for i, value in enumerate(labels):
            if value not in known:
                raise UserError(f"dataset {dataset}: {split} label {value!r} ({where_of(split, i)}) is not among the "
                                f"train split's labels ({', '.join(map(str, classes[:10]))}"
                                f"{', ...' if len(classes) > 10 else ''}); every class must be seen in training")


def split_off(n, frac, seed, labels=None):
    """(kept rows, drawn rows) of n rows: a seeded draw of round(frac * n) rows, within each class when
    labels are given (so every class keeps rows to train on)."""
    g = torch.Generator().manual_seed(seed)
    groups = [torch.arange(n)] if labels is None else [torch.tensor([i for i, y in enumerate(labels) if y == c])
                                                       for c in sorted(set(labels), key=str)]
    drawn = []
    for rows in groups:
        k = min(len(rows) - 1, round(frac * len(rows))) if labels is not None else round(frac * len(rows))
        drawn += rows[torch.randperm(len(rows), generator=g)[:max(0, k)]].tolist()
    drawn = sorted(drawn)
    chosen = set(drawn)
    return [i for i in range(n) if i not in chosen], drawn


def folder_fingerprint(paths):
    """A hash of the files' names, sizes and modification times (their content is not read)."""
    h = hashlib.sha256()
    for path in sorted(paths):
        st = os.stat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def tree_files(folder):
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if not f.startswith(".")]


def pick_splits(dataset, available, options):
    """{"train": name, "test": name or None, "val": name or None} from the names of the splits there
    are; a named split that is not there is one line listing those that are."""
    def need(flag, name):
        if name not in available:
            raise UserError(f"dataset {dataset} has no split {name!r} (--{flag}); it has: "
                            f"{', '.join(sorted(available)) or 'none'}")
        return name
    train = need("train_split", options.train_split)
    test = options.test_split if options.test_split in available else None
    if options.test_split != "test" and test is None:
        need("test_split", options.test_split)
    val = need("val_split", options.val_split) if options.val_split else \
        next((v for v in VAL_NAMES if v in available and v not in (train, test)), None)
    return dict(train=train, test=test, val=val)


@dataclass
class Rows:
    """One split's inputs (texts, pictures, or picture + text pairs) and their label values."""
    inputs: object
    labels: list
    originals: object = None  # originals(i) -> row i's picture as it is (aft.datasets.Split)


class Source:
    """What the loaders share: the dataset's name as given, where it is, the options; and the Task of
    its labelled rows."""
    modality = "text"

    def __init__(self, name, where, options):
        self.name, self.where, self.options = name, where, options

    def task(self, canonical, splits, classes, class_names=None, **extra):
        """The Task of `splits` ({split: Rows or None}), the labels mapped to their class's index."""
        index = {c: i for i, c in enumerate(classes)}
        out = {s: Split(rows.inputs, torch.tensor([index[y] for y in rows.labels], dtype=torch.long), rows.originals)
               for s, rows in splits.items() if rows is not None}
        return Task(canonical, self.modality, len(classes), out["train"], out["test"], val=out.get("val"),
                    class_names=[str(c) for c in (class_names or classes)], **extra)


# ---- a folder of pictures --------------------------------------------------------------------------------

@dataclass
class Pictures:
    paths: list
    labels: list  # class names


class ImageFolder(Source):
    modality = "image"

    def __init__(self, name, where, options):
        super().__init__(name, where, options)
        if not os.path.isdir(where):
            raise UserError(f"--dataset={name}: a folder of pictures must be a folder; {where} is a file")
        subdirs = sorted(d for d in os.listdir(where) if os.path.isdir(os.path.join(where, d)) and not d.startswith("."))
        if options.train_split in subdirs:
            chosen = pick_splits(name, subdirs, options)
            self.splits = {s: self.listing(os.path.join(where, d)) if d else None for s, d in chosen.items()}
        else:
            pool = self.listing(where)
            keep, test = split_off(len(pool.paths), options.test_frac, options.split_seed, pool.labels)
            self.splits = dict(train=Pictures([pool.paths[i] for i in keep], [pool.labels[i] for i in keep]),
                               test=Pictures([pool.paths[i] for i in test], [pool.labels[i] for i in test]), val=None)
        if self.splits["test"] is None:
            train = self.splits["train"]
            keep, test = split_off(len(train.paths), options.test_frac, options.split_seed, train.labels)
            self.splits.update(train=Pictures([train.paths[i] for i in keep], [train.labels[i] for i in keep]),
                               test=Pictures([train.paths[i] for i in test], [train.labels[i] for i in test]))
        if not self.splits["train"].paths:
            raise UserError(f"--dataset={name}: no pictures ({', '.join(IMAGE_EXTENSIONS)}) in class folders under "
                            f"{where}; the layout is train/CLASS/*.jpg and test/CLASS/*.jpg, or CLASS/*.jpg")
        self.classes = sorted(set(self.splits["train"].labels))
        check_labels(name, {s: p.labels for s, p in self.splits.items() if p is not None and s != "train"},
                     self.classes, lambda s, i: os.path.relpath(self.splits[s].paths[i], where))
        self.val = self.splits["val"]

    def listing(self, folder):
        """Every picture under folder/CLASS/ (at any depth), ordered by class, then path."""
        paths, labels = [], []
        for cls in sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))
                          and not d.startswith(".")):
            found = sorted(p for p in tree_files(os.path.join(folder, cls)) if p.lower().endswith(IMAGE_EXTENSIONS))
            paths += found
            labels += [cls] * len(found)
        return Pictures(paths, labels)

    def fingerprint(self):
        return folder_fingerprint([p for s in self.splits.values() if s is not None for p in s.paths])

    def load(self, canonical, data_dir, decoding):
        root, fingerprint, skipped = data_root(data_dir), self.fingerprint(), 0
        decoded = {}
        for split, pictures in self.splits.items():
            if pictures is None:
                continue
            if not decoding.side:  # the labels alone
                decoded[split] = Rows(None, pictures.labels)
                continue
            key = f"{canonical}-{split}-{decoding.key}-{fingerprint[:8]}"
            images, _, info = decoded_store(root, key, len(pictures.paths),
                                            lambda i, p=pictures: (decoding(open_picture(p.paths[i])), 0),
                                            decoding, f"{self.name} {split}")
            bad = {row: f"{os.path.relpath(pictures.paths[row], self.where)} ({reason})" for row, reason in info["bad"]}
            if bad and not self.options.skip_bad_rows:
                refuse_bad(self.name, "pictures cannot be read", list(bad.values()), SKIP_FIX)
            keep = torch.tensor([i for i in range(len(pictures.paths)) if i not in bad], dtype=torch.long)
            skipped += len(bad)
            kept = [pictures.paths[i] for i in keep.tolist()]
            decoded[split] = Rows(images[keep], [pictures.labels[i] for i in keep.tolist()],
                                  lambda i, paths=kept: open_picture(paths[i]))
        if skipped:
            print(f"note: left out {skipped} pictures of {self.name} that cannot be read (--skip_bad_rows)", flush=True)
        return self.task(canonical, decoded, self.classes, decoded_size=decoding.side, skipped=skipped)


# ---- a table of texts --------------------------------------------------------------------------------

@dataclass
class Texts:
    texts: list
    labels: list
    where: list  # "file row N" of each row, for error lines


def read_table(path):
    """The rows of a table file as dicts, and how to name row i in an error line."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".csv", ".tsv"):
            with open(path, encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ","))
        if ext == ".jsonl":
            with open(path, encoding="utf-8") as f:
                rows = []
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except ValueError as e:
                            raise UserError(f"{path} line {n} is not JSON ({first_line(e)})") from None
                return rows
        if ext == ".json":
            with open(path, encoding="utf-8") as f:
                rows = json.load(f)
            if not isinstance(rows, list):
                raise UserError(f"{path} must hold a list of rows (objects); JSON Lines (.jsonl) holds one per line")
            return rows
        import pyarrow.parquet
        return pyarrow.parquet.read_table(path).to_pylist()
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"cannot read {path} ({first_line(e)}); a table is UTF-8 CSV/TSV with a header, JSON Lines, "
                        f"a JSON list or Parquet") from None


def row_text(row, options, columns):
    """The text of a row: --prompt filled with its columns, or those columns one per line."""
    if options.prompt:
        return options.prompt.format(**{c: "" if missing(row.get(c)) else row.get(c) for c in columns})
    return "\n".join(str(row[c]) for c in columns if not missing(row.get(c)))


def prompt_fields(prompt):
    import string
    return [f for _, f, _, _ in string.Formatter().parse(prompt) if f]


def text_columns(dataset, options, columns, default=("text", "sentence")):
    """The columns a text is made of: --text_columns, else the fields of --prompt, else the first of
    `default` there is; each must be a column."""
    names = [c.strip() for c in options.text_columns.split(",") if c.strip()] or prompt_fields(options.prompt) or \
        [next((c for c in default if c in columns), None)]
    if names == [None]:
        raise UserError(f"dataset {dataset}: which columns hold the text? Name them with --text_columns (or --prompt "
                        f"'... {{column}} ...'); the columns are: {', '.join(columns)}")
    absent = [c for c in names + prompt_fields(options.prompt) if c not in columns]
    if absent:
        raise UserError(f"dataset {dataset} has no column {absent[0]!r} (--text_columns / --prompt); the columns are: "
                        f"{', '.join(columns)}")
    return names


def table_rows(dataset, rows, options, where):
    """Texts of table rows (dicts); rows with an empty text or no label are bad: refused, or left out
    with --skip_bad_rows. Returns Texts and the number left out."""
    columns = list(rows[0].keys()) if rows else []
    if rows and options.label_column not in columns:
        raise UserError(f"dataset {dataset} has no label column {options.label_column!r} (--label_column); the columns "
                        f"are: {', '.join(columns)}")
    names = text_columns(dataset, options, columns) if rows else []
    texts, labels, places, bad = [], [], [], {}
    for i, row in enumerate(rows):
        text = row_text(row, options, names)
        if missing(row.get(options.label_column)):
            bad[i] = f"{where(i)} (no label)"
        elif not text.strip() or all(missing(row.get(c)) for c in names):
            bad[i] = f"{where(i)} (empty text)"
        texts.append(text)
        labels.append(row.get(options.label_column))
        places.append(where(i))
    keep = [i for i in range(len(rows)) if i not in bad]
    if bad and not options.skip_bad_rows:
        refuse_bad(dataset, "rows cannot be used", list(bad.values()), SKIP_FIX)
    return Texts([texts[i] for i in keep], [labels[i] for i in keep], [places[i] for i in keep]), len(bad)


class Table(Source):

    def __init__(self, name, where, options):
        super().__init__(name, where, options)
        if os.path.isdir(where):
            files = {os.path.splitext(f)[0]: os.path.join(where, f) for f in sorted(os.listdir(where))
                     if is_table_file(os.path.join(where, f))}
            chosen = pick_splits(name, files, options)
            self.files = [files[d] for d in chosen.values() if d]
            parsed = {s: self.rows(read_table(files[d]), files[d]) if d else (None, 0) for s, d in chosen.items()}
        else:
            if not is_table_file(where):
                raise UserError(f"--dataset={name}: {where} is not a table file ({', '.join(TABLE_EXTENSIONS)})")
            self.files = [where]
            parsed = dict(train=self.rows(read_table(where), where), test=(None, 0), val=(None, 0))
        self.skipped = sum(n for _, n in parsed.values())
        self.splits = {s: texts for s, (texts, _) in parsed.items()}
        if self.splits["test"] is None:
            pool = self.splits["train"]
            keep, test = split_off(len(pool.texts), options.test_frac, options.split_seed,
                                   [str(y) for y in pool.labels])
            self.splits.update(train=Texts(*[[col[i] for i in keep] for col in (pool.texts, pool.labels, pool.where)]),
                               test=Texts(*[[col[i] for i in test] for col in (pool.texts, pool.labels, pool.where)]))
        self.classes = class_list(self.splits["train"].labels)
        for texts in self.splits.values():
            if texts is not None:
                texts.labels = [label_key(y, self.classes) for y in texts.labels]
        check_labels(name, {s: t.labels for s, t in self.splits.items() if t is not None and s != "train"},
                     self.classes, lambda s, i: self.splits[s].where[i])
        self.val = self.splits["val"]
        if self.skipped:
            print(f"note: left out {self.skipped} rows of {name} with an empty text or no label (--skip_bad_rows)",
                  flush=True)

    def rows(self, rows, path):
        header = 1 if path.lower().endswith((".csv", ".tsv")) else 0
        unit = "line" if path.lower().endswith((".csv", ".tsv", ".jsonl")) else "row"
        return table_rows(self.name, rows, self.options, lambda i: f"{os.path.basename(path)} {unit} {i + 1 + header}")

    def fingerprint(self):
        return folder_fingerprint(self.files)

    def load(self, canonical, data_dir, decoding):
        rows = {s: Rows(list(t.texts), t.labels) if t is not None else None for s, t in self.splits.items()}
        return self.task(canonical, rows, self.classes, truncation_side=self.options.truncation_side,
                         skipped=self.skipped)


# ---- a Hugging Face dataset ------------------------------------------------------------------------------

class HFData(Source):

    def __init__(self, name, where, options):
        super().__init__(name, where, options)
        import datasets
        self.hub_id = not os.path.exists(where)
        splits = self.open(datasets)
        if not isinstance(splits, datasets.DatasetDict):
            splits = datasets.DatasetDict({options.train_split: splits})
        chosen = pick_splits(name, list(splits), options)
        parts = {s: splits[d] if d else None for s, d in chosen.items()}
        train = parts["train"]
        columns = train.column_names
        if options.label_column not in columns:
            raise UserError(f"dataset {name} has no label column {options.label_column!r} (--label_column); the "
                            f"columns are: {', '.join(columns)}")
        self.image_column = options.image_column or ("image" if "image" in columns else "")
        if self.image_column and self.image_column not in columns:
            raise UserError(f"dataset {name} has no column {self.image_column!r} (--image_column); the columns are: "
                            f"{', '.join(columns)}")
        wants_text = options.text_columns or options.prompt or not self.image_column
        self.text_columns = text_columns(name, options, columns) if wants_text else []
        self.modality = "image_text" if self.image_column and self.text_columns else \
            ("image" if self.image_column else "text")
        if parts["test"] is None:
            labels = [str(v) for v in train[options.label_column]]
            keep, test = split_off(len(train), options.test_frac, options.split_seed, labels)
            parts.update(train=train.select(keep), test=train.select(test))
        self.parts = parts
        feature = parts["train"].features.get(options.label_column)
        self.names = list(getattr(feature, "names", None) or [])
        labels = {s: self.labels(ds) for s, ds in parts.items() if ds is not None}
        self.bad = {s: {i: f"{s} row {i} (no label)" for i, y in enumerate(v) if missing(y) or y == -1}
                    for s, v in labels.items()}
        if self.modality != "image":
            for s, ds in parts.items():
                if ds is not None:
                    for i, text in enumerate(self.texts(ds)):
                        if not text.strip():
                            self.bad[s].setdefault(i, f"{s} row {i} (empty text)")
        offenders = [w for s in self.bad.values() for w in s.values()]
        if offenders and not options.skip_bad_rows:
            refuse_bad(name, "rows cannot be used", offenders, SKIP_FIX)
        self.keep = {s: [i for i in range(len(ds)) if i not in self.bad[s]] for s, ds in parts.items() if ds is not None}
        self.classes = class_list([labels["train"][i] for i in self.keep["train"]])
        self.row_labels = {s: [label_key(labels[s][i], self.classes) for i in self.keep[s]] for s in self.keep}
        check_labels(name, {s: v for s, v in self.row_labels.items() if s != "train"}, self.classes,
                     lambda s, i: f"{s} row {self.keep[s][i]}")
        self.val = parts["val"]

    def open(self, datasets):
        if not self.hub_id:
            try:
                return datasets.load_from_disk(self.where)
            except (OSError, ValueError) as e:
                raise UserError(f"--dataset={self.name}: {self.where} is not a Hugging Face dataset saved with "
                                f"save_to_disk ({first_line(e)})") from None
        from aft.models.hub import check_hub
        check_hub()
        try:
            return datasets.load_dataset(self.where)
        except (OSError, ValueError) as e:
            state = f"offline ({offline_reason()}) and not in the datasets cache" if offline() else "cannot be loaded"
            raise UserError(f"--dataset={self.name}: the Hugging Face dataset {self.where} {state} "
                            f"({first_line(e, 120)}); download it once with a network (python -c \"import datasets; "
                            f"datasets.load_dataset('{self.where}')\"), or pass a folder saved with save_to_disk") from e

    def labels(self, ds):
        return list(ds[self.options.label_column])

    def texts(self, ds):
        rows = ds.select_columns(self.text_columns)
        return [row_text(row, self.options, self.text_columns) for row in rows]

    def fingerprint(self):
        if self.hub_id:
            return hashlib.sha256("".join(ds._fingerprint for ds in self.parts.values() if ds is not None)
                                  .encode()).hexdigest()[:16]
        return folder_fingerprint(tree_files(self.where))

    def load(self, canonical, data_dir, decoding):
        import datasets
        from aft.inputs import ImageText
        root, fingerprint, out = data_root(data_dir), self.fingerprint(), {}
        skipped = sum(len(b) for b in self.bad.values())
        for split, ds in self.parts.items():
            if ds is None:
                continue
            ds = ds.select(self.keep[split])
            texts = self.texts(ds) if self.text_columns else None
            images = None
            if self.image_column and decoding.side:
                cells = ds.select_columns([self.image_column])
                if isinstance(cells.features[self.image_column], datasets.Image):
                    cells = cells.cast_column(self.image_column, datasets.Image(decode=False))
                folder = self.where if not self.hub_id else None
                key = f"{canonical}-{split}-{decoding.key}-{fingerprint[:8]}"
                images, _, info = decoded_store(
                    root, key, len(cells), lambda i, c=cells: (decoding(open_picture(
                        self.cell(c[i][self.image_column], folder))), 0), decoding, f"{self.name} {split}")
                if info["bad"]:
                    refuse_bad(self.name, "pictures cannot be read", [f"{split} row {self.keep[split][r]} ({why})" for
                                                                      r, why in info["bad"]],
                               "fix or remove those rows (--skip_bad_rows leaves out rows without a label or text, "
                               "not pictures of a Hugging Face dataset)")
            if images is not None and texts is not None:
                inputs = ImageText(images, torch.arange(len(texts)), texts)
            else:
                inputs = images if images is not None else texts
            originals = None if images is None else \
                (lambda i, c=cells, folder=folder: open_picture(self.cell(c[i][self.image_column], folder)))
            out[split] = Rows(inputs, self.row_labels[split], originals)
        if skipped:
            print(f"note: left out {skipped} rows of {self.name} without a label or text (--skip_bad_rows)", flush=True)
        return self.task(canonical, out, self.classes, class_names=[self.names[c] for c in self.classes] if self.names and
                         all(isinstance(c, int) and 0 <= c < len(self.names) for c in self.classes) else None,
                         truncation_side=self.options.truncation_side,
                         decoded_size=decoding.side if self.image_column else 0, skipped=skipped)

    @staticmethod
    def cell(value, folder):
        """An image cell as open_picture takes it: bytes, or a path (relative to the dataset's folder)."""
        if isinstance(value, bytes):
            return {"bytes": value}
        if isinstance(value, str) and folder and not os.path.isabs(value):
            return os.path.join(folder, value)
        return value
