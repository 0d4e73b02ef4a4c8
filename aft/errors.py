"""One exception for every mistake a user can fix; the scripts print it as one line and exit 2."""
import sys


class UserError(Exception):
    """Bad input or state, with a message that names the fix."""


def main_guard(fn):
    """Run `fn()`; a UserError becomes one line on stderr and exit status 2, never a traceback."""
    try:
        return fn()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
