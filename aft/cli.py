"""The command line the three scripts share: flags in two help groups, `--help` that lists them
group by group (the paper's first), and every command-line mistake as one line.

absl itself answers a bad number, a value outside a flag's choices or an unknown flag with two
lines and exit status 1; here each is the one `error: ...` line and exit status 2 of every other
mistake (aft.errors). An unknown flag keeps absl's spelling suggestions on that line, and a name
the paper or common usage gives a flag (--beta for --prec) is answered with the flag's name here.
"""
import os
import sys
from dataclasses import fields

from absl import app, flags

from aft.datasets.base import DATASETS, DataOptions
from aft.errors import UserError, bound_text, main_guard

# Help groups. absl's --help shows one alphabetical list, so run() replaces it with one that shows
# these groups in this order; --helpfull lists every module's group, sorted by name (absl's own first).
PAPER = "the paper's flags"
TOOL = "this tool's own flags"

# Flags known by another name: absl suggests only names spelled alike.
ALIASES = {"beta": "prec", "learning_rate": "lr", "weight_decay": "wd"}

DEFINE = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}


def define(group, name, default, help, choices=None, bound=None):
    """A flag of help group `group`: an absl enum of `choices` when given, else of its default's
    type; its help ends with its choices or its `bound` (a key of aft.errors.BOUND_TESTS)."""
    if bound:
        help = f"{help}; {bound_text(bound)}"
    if not choices:
        return DEFINE[type(default)](name, default, help, module_name=group)
    flag = flags.EnumFlag(name, default, help, choices)
    # absl's own help starts with <a|b|...>, one word that --help cuts anywhere (flow-ers): a list instead
    flag.help = f"{help}; one of {', '.join(choices)}"
    return flags.DEFINE_flag(flag, module_name=group)


DATASET_HELP = ("the dataset: one of " + ", ".join(DATASETS.names()) + " (README's Datasets); or your own data: a "
                "folder of pictures, a table file (.csv .tsv .jsonl .json .parquet) or folder of them, hf:ID or a "
                "folder saved by save_to_disk (README's Your own data)")


def define_data_flags():
    """The flags of aft.datasets.DataOptions (how your own data is read), in this tool's group."""
    for f in fields(DataOptions):
        define(TOOL, f.name, f.default, f.metadata["help"], f.metadata["choices"], f.metadata["bound"])


def data_options():
    """The DataOptions the flags give, their bounds checked."""
    return DataOptions(**{f.name: getattr(flags.FLAGS, f.name) for f in fields(DataOptions)}).check()


def run(main):
    """absl's app.run(main) with the grouped --help, and every flag mistake as one line."""
    app.define_help_flags()
    for absl_help in (app.HelpFlag, app.HelpshortFlag):
        flags.DEFINE_flag(grouped_help(absl_help), module_name="absl.app")
    app.run(main, flags_parser=lambda argv: main_guard(lambda: parse(argv)))


def grouped_help(absl_help):
    """absl's help flag `absl_help`, printing the script's docstring and its flags group by group."""
    class GroupedHelp(absl_help):
        def parse(self, arg):
            if self._parse(arg):
                groups = "\n".join(flags.FLAGS.module_help(group) for group in (PAPER, TOOL))
                try:
                    print(f"{sys.modules['__main__'].__doc__}\nflags:\n{groups}\n\n"
                          f"Try --helpfull to get a list of all flags.", flush=True)
                except BrokenPipeError:  # the reader stopped early (--help | head): as the Python docs advise
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(1)  # as absl's --help and --helpfull

    flag = GroupedHelp()
    flag.allow_override = True  # it replaces absl's flag of the same name
    return flag


def parse(argv):
    """absl's parse of `argv`, its errors as UserErrors; returns argv without the flags."""
    try:
        rest = flags.FLAGS(argv)
    except flags.UnrecognizedFlagError as e:
        meant = ALIASES.get(e.flagname)
        if meant in flags.FLAGS:
            e = flags.UnrecognizedFlagError(e.flagname, e.flagvalue, suggestions=[meant])
        raise UserError(str(e)) from None
    except flags.Error as e:
        raise UserError(" ".join(str(e).split())) from None
    if len(rest) > 1:  # absl passes words that are not flags on to main, where they would be ignored
        raise UserError(f"unexpected argument {rest[1]!r}: flags are written --name=value")
    return rest
