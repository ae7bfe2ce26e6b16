"""Names from the plan (members, profiles) that become file and folder names in a build, and the nearest known
name for a misspelt one."""

from __future__ import annotations

import hashlib
import re


def safe_name(name: str) -> str:
    """A plan's name (member, profile) as one file or folder name: letters, digits, '-' and '_' only. A name
    that needed changing also gets 8 hex digits of its own sha256, so ``a.b`` and ``a_b`` stay two files."""
    if not name:
        raise ValueError("an empty name has no file name")
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name)
    return cleaned if cleaned == name else f"{cleaned}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def did_you_mean(name: str, known: list[str]) -> str:
    """"; did you mean X?" for the nearest known names by edit distance (empty when none is near)."""
    import difflib

    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
