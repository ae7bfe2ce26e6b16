"""One rule for progress bars: shown when asked for and stderr is a terminal (tqdm's ``disable=None``); piped
into a log file they would fill it with carriage-return frames, so there they stay off."""

from __future__ import annotations


def bar_off(wanted: bool) -> bool | None:
    """tqdm's ``disable`` for a bar the user did not turn off with --quiet: None = off unless stderr is a terminal."""
    return None if wanted else True
