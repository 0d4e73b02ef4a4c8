"""One exception for every mistake a user can fix; the scripts print it as one line and exit 2."""
import re
import sys


class UserError(Exception):
    """Bad input or state, with a message that names the fix."""


def first_line(err, limit=160):
    """The first line of an exception's message (colour codes removed), cut to `limit` characters:
    what a one-line error quotes of a library's long one."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


def main_guard(fn):
    """Run `fn()`; a UserError becomes one line on stderr and exit status 2, never a traceback."""
    try:
        return fn()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
