"""Things of one kind found by name: methods, datasets, models. Every registry has the same shape:
register by name, look up by name, and one error for a name it does not know, listing the valid
names and the closest ones ("did you mean"). A registry may also hold ordered rules for names that
are not registered one by one (a timm name, a local folder), tried in order after the names."""
import difflib

from aft.errors import UserError


def did_you_mean(name, candidates):
    """" (did you mean: a, b?)" for the candidates spelled most like `name`, or "" when none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.75)
    if not close and name.lower() != name:
        close = difflib.get_close_matches(name.lower(), list(candidates), n=3, cutoff=0.75)
    return f" (did you mean: {', '.join(close)}?)" if close else ""


class Registry:
    """Named entries of one `kind`. `rules`: (matches(name), entry) pairs tried in order for a name
    that is not registered; `valid` describes the valid names in the error when they are not
    simply the registered ones; `more_names()` gives further names to suggest from (timm's registry)."""

    def __init__(self, kind, rules=(), valid=None, more_names=None):
        self.kind, self.rules, self.valid, self.more_names = kind, list(rules), valid, more_names
        self.entries = {}

    def register(self, name, entry=None):
        """Register `entry` under `name`; without `entry`, a decorator registering what it wraps."""
        if entry is None:
            return lambda obj: self.register(name, obj)
        if name in self.entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self.entries[name] = entry
        return entry

    def __contains__(self, name):
        return name in self.entries

    def __iter__(self):
        return iter(self.entries)

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, name):
        return self.entries[name]

    def items(self):
        return self.entries.items()

    def values(self):
        return self.entries.values()

    def names(self):
        return sorted(self.entries)

    def get(self, name):
        """The entry of `name`, or that of the first rule it matches; else the one-line error."""
        if name in self.entries:
            return self.entries[name]
        for matches, entry in self.rules:
            if matches(name):
                return entry
        raise self.unknown(name)

    def unknown(self, name):
        candidates = dict.fromkeys(list(self.entries) + (list(self.more_names()) if self.more_names else []))
        valid = (self.valid or "{registered}").format(registered=", ".join(self.names()))
        return UserError(f"unknown {self.kind} {name!r}{did_you_mean(name, candidates)}; valid {self.kind}s: {valid}")
