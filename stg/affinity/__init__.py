"""Task affinities: TAG network selection (``selection``)."""

from stg.affinity.selection import METHODS, Selection, membership, select_groups

__all__ = ["METHODS", "Selection", "membership", "select_groups"]
