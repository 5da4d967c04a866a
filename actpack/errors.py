"""Named errors of actpack."""

from __future__ import annotations

__all__ = ["FrameError"]


class FrameError(ValueError):
    """A frame is corrupted, truncated, foreign or of a newer format version.

    The message names what is wrong. A decoder never returns data from a frame that raised this.
    """
