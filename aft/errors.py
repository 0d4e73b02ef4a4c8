"""One exception for every mistake a user can fix; the scripts print it as one line and exit 2."""
import math
import re
import sys


class UserError(Exception):
    """Bad input or state, with a message that names the fix."""


def first_line(err, limit=160):
    """The first line of an exception's message (colour codes removed), at most `limit` characters:
    what a one-line error quotes of a library's long one. A longer line is cut after its last whole
    word that fits and ends in "..." (a single word longer than that is cut where it must)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    if len(line) <= limit:
        return line
    keep = limit - len("...")
    space = line.rfind(" ", 0, keep + 1)  # a space right after the kept part still ends a whole word
    return (line[:space] if space > 0 else line[:keep]).rstrip() + "..."


# A numeric flag's bound, as its error line states it, and the test of it.
BOUND_TESTS = {"> 0": lambda v: v > 0, ">= 0": lambda v: v >= 0, "(0, 1]": lambda v: 0 < v <= 1,
               "(0, 1)": lambda v: 0 < v < 1}


def bound_text(bound):
    """A bound as a phrase: "> 0", "in (0, 1]"."""
    return f"in {bound}" if bound.startswith("(") else bound


def check_bounds(values, bounds, notes=None):
    """Refuse the first flag outside its bound, as `--flag=value must be BOUND`: `values` has the
    flags as attributes (a Config, absl's FLAGS), `bounds` maps a flag to a key of BOUND_TESTS, and
    `notes` may add what a flag is to its error line. NaN and infinities are refused too."""
    for flag, bound in bounds.items():
        value = getattr(values, flag)
        if math.isfinite(value) and BOUND_TESTS[bound](value):
            continue
        finite = "" if math.isfinite(value) else "finite and "
        note = f" ({notes[flag]})" if notes and flag in notes else ""
        raise UserError(f"--{flag}={value} must be {finite}{bound_text(bound)}{note}")


def main_guard(fn):
    """Run `fn()`; a UserError becomes one line on stderr and exit status 2 (or its own `status`), and
    Ctrl-C outside a run's training (which stops it at a step, aft.loop) one line and 130: never a
    traceback."""
    try:
        return fn()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(getattr(e, "status", 2))
    except KeyboardInterrupt:
        print("\nerror: interrupted; the same command started again skips what was finished (decoded pictures, the "
              "feature chunks saved, a run's last checkpoint with --ckpt_dir and --resume=True)", file=sys.stderr)
        sys.exit(130)
