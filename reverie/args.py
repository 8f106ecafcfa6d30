"""What a valid value is, said once: the rules that check command-line arguments and config-file fields.

A ``Rule`` names a kind of value (a positive whole number, a fraction, a port, one of a few words) with the
words an error uses and the bounds.  The command line parses text with it (``positive(args.steps,
"--steps")``), and ``reverie/config_file.py`` turns the same rules into the typed schema of the YAML
config (``Rule.annotation``), so a flag and a file field of one kind are checked, and refused, alike::

    --steps must be a positive whole number, got 'many'
    reverie.yaml: loop.steps: must be a positive whole number, got 'many'

Every check raises ``ReverieError``: the command line prints it as one line and exits 2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

from reverie.errors import ReverieError


@dataclass(frozen=True)
class Rule:
    """One kind of value: its Python type, its bounds, and what an error says about it.

    ``wants`` is said when the value is not of the kind at all ('many' for a count), ``bounds`` when it is
    but lies outside the bounds (0 for a positive count); both read after the name of the value."""
    kind: type  # int, float, str, bool or dict
    wants: str
    bounds: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False  # None (YAML null) is allowed too

    def annotation(self) -> Any:
        """The type a pydantic model checks this kind of value with (strictly: no '5' for 5, no 1 for true)."""
        from pydantic import Field

        if self.choices:
            t: Any = Literal[self.choices]
        elif self.kind in (int, float):
            t = Annotated[self.kind, Field(ge=self.ge, gt=self.gt, le=self.le, lt=self.lt, allow_inf_nan=False)
                          if self.kind is float else Field(ge=self.ge, gt=self.gt, le=self.le, lt=self.lt)]
        elif self.kind is str:
            t = Annotated[str, Field(min_length=1)]
        elif self.kind is dict:
            t = dict[str, Any]
        else:
            t = self.kind
        return Optional[t] if self.optional else t

    def message(self, what: str, value: Any, *, out_of_bounds: bool) -> str:
        return f"{what} {self.bounds if out_of_bounds and self.bounds else self.wants}, got {value!r}"

    def from_text(self, text: str) -> Any:
        """``text`` as this kind of value where it reads as one, else ``text`` unchanged (for the schema to refuse)."""
        if self.kind in (int, float):
            try:
                return self.kind(text)
            except ValueError:
                return text
        return text

    def within(self, x: Any) -> bool:
        if self.choices:
            return x in self.choices
        if self.kind is str:
            return bool(x)
        if self.kind is float and not math.isfinite(x):
            return False
        return not ((self.ge is not None and x < self.ge) or (self.gt is not None and x <= self.gt)
                    or (self.le is not None and x > self.le) or (self.lt is not None and x >= self.lt))

    def parse(self, text: str, what: str) -> Any:
        """The command-line text ``text`` of the argument ``what`` as a checked value, or a ReverieError."""
        value = self.from_text(text)
        if self.kind in (int, float) and isinstance(value, str):
            raise ReverieError(self.message(what, text, out_of_bounds=False))
        if not self.within(value):
            raise ReverieError(self.message(what, text, out_of_bounds=True))
        return value


def whole(lo: int, hi: int | None = None) -> Rule:
    """A whole number from ``lo`` (to ``hi``)."""
    if hi is not None:
        says = f"must be a whole number from {lo} to {hi}"
        return Rule(int, says, says, ge=lo, le=hi)
    if lo == 1:
        return Rule(int, "must be a positive whole number", "must be a positive whole number", ge=1)
    if lo == 0:
        return Rule(int, "must be a whole number, 0 or more", "must not be negative", ge=0)
    return Rule(int, f"must be a whole number, {lo} or more", f"must be at least {lo}", ge=lo)


def one_of(*choices: str) -> Rule:
    says = f"must be one of {', '.join(choices)}"
    return Rule(str, says, says, choices=tuple(choices))


POSITIVE = whole(1)
COUNT = whole(0)
PORT = whole(1, 65535)
SEED = Rule(int, "must be a whole number from 0 to 2**32-1", "must be a whole number from 0 to 2**32-1",
            ge=0, le=2**32 - 1)
FRACTION = Rule(float, "must be a number in [0, 1)", "must be in [0, 1)", ge=0.0, lt=1.0)
SHARE = Rule(float, "must be a number in [0, 1]", "must be in [0, 1]", ge=0.0, le=1.0)
SECONDS = Rule(float, "must be a number of seconds", "must be between 0 and 3600 seconds", gt=0.0, le=3600.0)
PERIOD = Rule(float, "must be a number of seconds", "must not be negative", ge=0.0)
LEARNING_RATE = Rule(float, "must be a number", "must be between 0 and 1", gt=0.0, lt=1.0)
TEMPERATURE = Rule(float, "must be a number", "must be between 0 and 10", gt=0.0, le=10.0)
PROBABILITY = Rule(float, "must be a number", "must be between 0 and 1", gt=0.0, lt=1.0)
WEIGHT = Rule(float, "must be a number", "must be between 0 and 100", ge=0.0, le=100.0)
NUMBER = Rule(float, "must be a number")
NON_NEGATIVE = Rule(float, "must be a number", "must not be negative", ge=0.0)
TEXT = Rule(str, "must be a non-empty string")
PATH = Rule(str, "must be a path (a non-empty string)")
FLAG = Rule(bool, "must be true or false")
MAPPING = Rule(dict, "must be a mapping of names to values")


def optional(rule: Rule) -> Rule:
    """``rule``, or None (YAML null)."""
    return Rule(rule.kind, rule.wants.replace("must be ", "must be null or ", 1), rule.bounds, rule.ge, rule.gt,
                rule.le, rule.lt, rule.choices, optional=True)


# ------------------------------------------------------------------ the command line's checks
def positive(text: str, what: str) -> int:
    return POSITIVE.parse(text, what)


def count(text: str, what: str) -> int:
    return COUNT.parse(text, what)


def fraction(text: str, what: str) -> float:
    return FRACTION.parse(text, what)


def int_in(text: str, what: str, lo: int, hi: int) -> int:
    return whole(lo, hi).parse(text, what)


def seconds(text: str, what: str) -> float:
    return SECONDS.parse(text, what)


def choice(text: str, what: str, choices: tuple[str, ...]) -> str:
    return one_of(*choices).parse(text, what)


def version(text: str, what: str = "the version") -> int:
    """A policy-version id as typed: a positive whole number."""
    return POSITIVE.parse(text, what)


def known(kind: str, choices, plural: str | None = None):
    """A parser for :func:`listed` that takes only ``choices``: "unknown method 'x'; methods are: a, b"."""
    def parse(text: str) -> str:
        if text not in choices:
            raise ReverieError(f"unknown {kind} {text!r}; {plural or kind.split()[-1] + 's'} are: {', '.join(choices)}")
        return text

    return parse


def out_folder(text: str, what: str = "--out"):
    """An output folder as typed: it may not exist yet, but must not be a file."""
    from pathlib import Path

    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ReverieError(f"{what} {text!r} exists and is not a directory")
    return path


def listed(text: str, what: str, parse) -> list:
    """A comma-separated list as typed, each item checked by ``parse`` (at least one item)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ReverieError(f"{what} must list at least one value, got {text!r}")
    return [parse(t) for t in items]
