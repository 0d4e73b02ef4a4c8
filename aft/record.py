"""The results record of one run, `{out_dir}/{run_name}.json`: its schema (versioned), its one writer
and its one reader. run.py writes it; `--skip_done`, the check that no other run's record is
overwritten, and the results table (aft.results) read it.

Version 1 (the files of earlier code) had no `version` key, and the oldest of them no `world_size`,
`decoded_size` or `provenance`: they read as version 2 with one process, pictures kept as they were
and no provenance.
"""
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field, fields

from aft.errors import UserError, first_line
from aft.files import write_json
from aft.runtime import library_versions

VERSION = 2


@dataclass
class RunRecord:
    run_name: str
    config: dict  # every flag's value (aft.identity.flat_config)
    steps: int  # steps trained (x4 on mnli, qqp, qnli)
    eval_split: str  # "test", or "val" with --use_val
    n_train: int
    n_eval: int
    evals: list  # one dict(step, loss, ce, reg, acc) per evaluation
    final_acc: float  # the last evaluation's accuracy, as in the paper
    device: str
    precision: str
    world_size: int  # processes (torchrun)
    decoded_size: int  # side of the squares the pictures were decoded to (0: kept as they are)
    seconds: float
    train_seconds: float = None  # the training steps' own share of `seconds` (None in files of earlier code)
    provenance: dict = field(default_factory=dict)  # commit, dirty, library versions, argv
    identity: dict = None  # what makes it this run (aft.identity.result_identity); None in files of earlier code
    dataset: str = ""  # the dataset's name in files: your own data's by what it is (aft.datasets.own)
    classes: list = field(default_factory=list)  # the class of each label index
    skipped_rows: int = 0  # bad rows of your own data left out (--skip_bad_rows)
    version: int = VERSION

    def write(self, path):
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path):
        """The record at `path`; a UserError for a file that is not one (it is then never overwritten)."""
        try:
            with open(path) as f:
                saved = json.load(f)
            return cls.from_dict(saved)
        except (OSError, ValueError, TypeError, KeyError) as e:
            problem = first_line(e)
        raise UserError(f"{path} is not a results JSON of run.py ({problem}); pass another --run_name or --out_dir, "
                        "or move it away")

    @classmethod
    def from_dict(cls, saved):
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise ValueError("it has no config")
        version = saved.get("version", 1)
        if version > VERSION:
            raise ValueError(f"it is of version {version}, newer than this code's {VERSION}")
        if version == 1:
            saved = {**VERSION_1_DEFAULTS, **saved}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known and k != "version"})


VERSION_1_DEFAULTS = dict(world_size=1, decoded_size=0, provenance={})


CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def provenance():
    """What made a result: the code's git commit, the library versions and the command line."""
    commit, dirty = git_state(CODE_ROOT)
    return dict(commit=commit, dirty=dirty, python=platform.python_version(), **library_versions(),
                argv=list(sys.argv))


def git_state(root):
    """(commit, dirty) of the git checkout whose top folder is `root`, dirty meaning tracked files
    changed since that commit (untracked ones, like results, do not count, as in `git describe
    --dirty`); ("unknown", "unknown") when `root` is not such a checkout, e.g. the package was
    installed elsewhere (a checkout around it would be another project's commit) or git is missing."""
    def git(*args):  # no optional locks: `status` must not take the index lock from a concurrent git command
        return subprocess.run(["git", "--no-optional-locks", "-C", root, *args], capture_output=True, text=True,
                              check=True, timeout=60).stdout.strip()
    try:
        if os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(root):
            return "unknown", "unknown"
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
