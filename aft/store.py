"""Decoded pictures on disk: one file of raw uint8 squares per split and decode size, written once,
resumably, then read a batch of rows at a time, so a set larger than memory can be extracted and
trained on.

`{key}.u8` holds the rows one after another, each channels x size x size bytes; `{key}.json` beside it
holds the row count, the size and the labels, and is written last: a store without it is unfinished.
While it is written, `{key}.u8.partial` fills chunk by chunk and `{key}.u8.done` lists the chunks
already synced, so a killed decoding started again decodes only the chunks it lacks. Reads go through
the file (pread), not a memory map, so the pictures never count against the process's memory.
"""
import json
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from aft.errors import UserError, first_line
from aft.files import atomic_write, locked

CHUNK_ROWS = 1024  # rows decoded and synced together: what a kill can cost


class DiskImages:
    """The rows `rows` (all when None) of a store of n uint8 pictures (channels, size, size) in the file
    `path`. Indexing with a tensor of rows gives another view; read(rows) gives the pixels."""

    dtype = torch.uint8

    def __init__(self, path, n, channels, size, rows=None):
        self.path, self.n, self.channels, self.size = path, n, channels, size
        self.rows = rows  # a LongTensor into the file's rows, or None for all of them
        self.row_bytes = channels * size * size

    def __len__(self):
        return self.n if self.rows is None else len(self.rows)

    @property
    def shape(self):
        return (len(self), self.channels, self.size, self.size)

    @property
    def nbytes(self):
        return len(self) * self.row_bytes

    def __getitem__(self, idx):
        idx = torch.as_tensor(idx, dtype=torch.long)
        return DiskImages(self.path, self.n, self.channels, self.size, idx if self.rows is None else self.rows[idx])

    def file_rows(self, idx):
        idx = torch.as_tensor(idx, dtype=torch.long).cpu()
        return idx if self.rows is None else self.rows[idx]

    def read(self, idx, out=None):
        """The pixels of rows `idx` of this view, (len(idx), channels, size, size) uint8, into `out` when
        given (pinned memory, for an asynchronous copy to the GPU). Runs of consecutive rows are read
        at once."""
        rows = self.file_rows(idx).numpy()
        out = torch.empty((len(rows), self.channels, self.size, self.size), dtype=torch.uint8) if out is None else out
        flat = out.view(-1).numpy()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            start = 0
            while start < len(rows):
                end = start + 1
                while end < len(rows) and rows[end] == rows[end - 1] + 1:
                    end += 1
                run, offset = memoryview(flat[start * self.row_bytes:end * self.row_bytes]), int(rows[start]) * self.row_bytes
                done = 0
                while done < len(run):  # a read returns at most 2 GiB (Linux): a longer run takes several
                    got = os.preadv(fd, [run[done:]], offset + done)
                    if got == 0:
                        raise UserError(f"{self.path} is shorter than its {self.n} rows (truncated?); delete it and "
                                        f"its .json to decode the pictures again")
                    done += got
                start = end
        finally:
            os.close(fd)
        return out

    def load(self):
        """Every row of this view in memory."""
        return self.read(torch.arange(len(self)))


def store_paths(folder, key):
    base = os.path.join(folder, key)
    return f"{base}.u8", f"{base}.json"


def open_store(folder, key, n=None, extra=None):
    """(DiskImages, labels, info) of the finished store `key` in `folder`, or None when there is none
    (or it holds another number of rows than `n`, or its header other values for `extra`'s keys)."""
    data, header = store_paths(folder, key)
    try:
        with open(header) as f:
            info = json.load(f)
        if (n is not None and info["n"] != n) or os.path.getsize(data) != info["n"] * info["channels"] * \
                info["size"] ** 2 or any(info.get(k) != v for k, v in (extra or {}).items()):
            return None
    except (OSError, ValueError, KeyError):
        return None
    return DiskImages(data, info["n"], info["channels"], info["size"]), torch.tensor(info["labels"]), info


def write_store(folder, key, n, size, get, workers, desc="decoding", extra=None):
    """Decode rows 0..n-1 with get(i) -> (uint8 (3, size, size) tensor or None for an unreadable row,
    label) in threads into the store `key`, resuming a killed decoding; returns what open_store does.
    The labels, the rows that could not be read (`bad`: [row, reason]) and `extra` go into the header; a
    store or a killed decoding made with other `extra` values is decoded anew."""
    from tqdm import tqdm
    try:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f".{key}.lock"), "a"):
            pass
    except OSError as e:
        raise UserError(f"cannot write decoded pictures to {folder} ({first_line(e)}); set AFT_DECODED_DIR to a "
                        f"folder you can write (or give --data_dir one)") from None
    data, header = store_paths(folder, key)
    partial, done_file = f"{data}.partial", f"{data}.done"
    row_bytes = 3 * size * size
    # Two processes decoding one store take turns: the second finds it made.
    with locked(os.path.join(folder, f".{key}.lock"), f"waiting for {data}: another process is decoding it"):
        finished = open_store(folder, key, n, extra)
        if finished is not None:
            return finished
        done = _read_done(done_file, n, size, extra)
        if not os.path.exists(partial) or os.path.getsize(partial) != n * row_bytes:
            done = {}
        with open(partial, "ab"):
            pass
        os.truncate(partial, n * row_bytes)
        chunks = [range(k, min(n, k + CHUNK_ROWS)) for k in range(0, n, CHUNK_ROWS)]
        fd = os.open(partial, os.O_RDWR)
        try:
            with ThreadPoolExecutor(workers) as pool:
                for k, chunk in enumerate(tqdm(chunks, desc=desc, leave=False, mininterval=2)):
                    if str(k) in done:
                        continue

                    def work(i):
                        try:
                            image, label = get(i)
                        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for a damaged file
                            return None, None, first_line(e, 80)
                        if image is None:
                            return None, label, "unreadable"
                        os.pwrite(fd, image.contiguous().numpy().tobytes(), i * row_bytes)
                        return True, label, None

                    results = list(pool.map(work, chunk))
                    os.fsync(fd)
                    done[str(k)] = [[r[1] for r in results], [[i, r[2]] for i, r in zip(chunk, results) if r[2]]]
                    _write_done(done_file, n, size, extra, done)
        finally:
            os.close(fd)
        labels = [label for k in range(len(chunks)) for label in done[str(k)][0]]
        bad = [b for k in range(len(chunks)) for b in done[str(k)][1]]
        os.replace(partial, data)
        atomic_write(header, lambda f: json.dump(dict(n=n, channels=3, size=size, labels=[
            -1 if label is None else label for label in labels], bad=bad, **(extra or {})), f), binary=False)
        os.remove(done_file)
    return open_store(folder, key, n, extra)


def _read_done(path, n, size, extra):
    try:
        with open(path) as f:
            saved = json.load(f)
        return saved["chunks"] if (saved["n"], saved["size"], saved.get("extra")) == (n, size, extra or {}) else {}
    except (OSError, ValueError, KeyError):
        return {}


def _write_done(path, n, size, extra, done):
    atomic_write(path, lambda f: json.dump(dict(n=n, size=size, extra=extra or {}, chunks=done), f), binary=False)
