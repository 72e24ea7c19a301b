"""The baselines a grouping's specialists are trained against, and how a list of names is read.
Torch-free, so that planning code (``stg.compare.plan``) and the dashboard use it without torch."""

from __future__ import annotations

from typing import Sequence

from stg.errors import StgError

BASELINES = ("mtl", "random", "stl")


def parse_names(value: Sequence[str] | str, known: Sequence[str], what: str) -> list[str]:
    """"mtl,random" (as the CLI spells it) or a list -> names out of ``known``, in the given order,
    once each; an unknown name is a one-line StgError ("unknown <what> 'x': choose from ...")."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    out = list(dict.fromkeys(value))
    bad = [v for v in out if v not in known]
    if bad:
        raise StgError(f"unknown {what} {bad[0]!r}: choose from {', '.join(known)}")
    return out
