"""Files that are never half-written: every file the tool writes (feature caches, checkpoints,
results, decoded images) goes to a temporary file beside its target, is flushed to disk and renamed
into place, so a crash or a kill leaves either the old file or the new one, never a torn one. And
loading a torch file never runs pickled code. A file that is read, changed and written back (a
feature cache that logme.py scores) is held under a lock meanwhile, so no writer loses another's update."""
import contextlib
import fcntl
import json
import os
import re
import signal
import tempfile
import time

import torch

from aft.errors import UserError

STALE_TEMP_SECONDS = 3600
TEMP_PREFIX = ".tmp-"
# A test hook, unset in normal use: with this variable set, a writer stops itself (SIGSTOP) after its
# temporary file is complete and synced, before the rename, so a test can SIGKILL it at exactly that
# moment, or let it go on (SIGCONT), however fast the machine (tests/test_reliability.py).
STOP_BEFORE_RENAME = "AFT_TEST_STOP_BEFORE_RENAME"


def atomic_write(path, write, binary=True):
    """Call `write(f)` on a temporary file beside `path`, fsync, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=suffix)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; these are ordinary files
        if os.environ.get(STOP_BEFORE_RENAME):
            os.kill(os.getpid(), signal.SIGSTOP)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    remove_stale_temps(folder)


@contextlib.contextmanager
def exclusive(path):
    """Hold an advisory lock on the existing file `path` (through a hidden `.NAME.lock` beside it, since
    the file itself is replaced by each write) until the block ends. Two logme.py runs scoring other rows
    of one cache, or logme.py while save_features.py rewrites the cache, would otherwise each write back
    what they read and drop the other's keys or features. A file that does not exist yet has no update to
    lose, so nothing is locked (and nothing made beside it); where the file system has no locks (some
    network mounts) the block runs unlocked, as before this lock existed."""
    if not os.path.exists(path):
        yield
        return
    folder, name = os.path.split(os.path.abspath(path))
    with locked(os.path.join(folder, f".{name}.lock")):
        yield


@contextlib.contextmanager
def locked(lock_path, waiting=None):
    """Hold an advisory lock on the file `lock_path` (made empty if missing) until the block ends; where
    the file system has no locks, the block runs unlocked. `waiting`: the line printed when another
    process holds the lock, before waiting for it."""
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(waiting, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:
            pass
        yield  # closing the file releases the lock


def atomic_save(obj, path):
    """torch.save `obj` to `path` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def write_json(path, obj):
    """`obj` as indented JSON at `path`, atomically."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=1), binary=False)


def remove_stale_temps(folder):
    """A kill -9 mid-write leaves a `.tmp-*` file beside the target. Nothing ever reads one (the target
    name is only ever made by the rename), and one unmodified for an hour is no longer being written
    by anyone, so it is deleted here to give the disk space back."""
    now = time.time()
    for name in os.listdir(folder):
        if name.startswith(TEMP_PREFIX):
            stale = os.path.join(folder, name)
            try:
                if now - os.path.getmtime(stale) > STALE_TEMP_SECONDS:
                    os.remove(stale)
            except OSError:
                pass  # another process removed it first


def safe_load(path, what="file", mmap=False, fix="delete it and make it again"):
    """torch.load with weights_only=True; a corrupt, truncated or code-carrying file is a UserError
    ending with `fix`. torch's own advice for such a file, to load it with weights_only=False, is not
    passed on: that would run whatever code the file holds."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises several types for a bad archive or a refused pickle
        code = re.search(r"GLOBAL (\S+)", str(e))
        why = f"it holds pickled code or objects ({code.group(1)}), which are never loaded" if code else \
            "it is corrupt or truncated, or no torch file"
        raise UserError(f"{path} is not a readable {what}: {why}; {fix}") from None
