"""Names from the plan (members, profiles) that become file and folder names in a build."""

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
