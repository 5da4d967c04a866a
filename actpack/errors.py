"""Named errors of actpack."""

from __future__ import annotations

import enum

__all__ = ["Check", "FrameError"]


class Check(enum.Enum):
    """A numbered check of docs/format.md section 10; the value is its row's number there.

    The members are in that section's order, the order ``frame.parse_frame`` tries them (23 on
    are the block decoders'). This is the one list of checks: ``FrameError.check`` names one,
    the gateware's ``hw.frameparse.FrameCheck`` bits are derived from it, and the card model and
    driver map it to the card's error codes.
    """

    NOT_FRAME = "1"  # fewer than 4 bytes, or foreign magic
    TRUNCATED_FIXED = "2"  # fewer than the 40 bytes of the fixed header
    VERSION_NEWER = "3"
    VERSION = "4"  # version 0
    NDIM = "5"
    NGROUPS = "6"  # more than spec.MAX_GROUPS
    TRUNCATED_HEADER = "7"  # shorter than the header and its CRC
    HEADER_CRC = "8"
    HEADER_PADDING = "8a"
    MODE_DTYPE = "9"
    NUMEL = "9a"  # more elements than spec.MAX_NUMEL, zero dims counted as 1
    TABLE_ZERO = "10"
    SCALE = "11"  # mantissa or exponent out of range
    SCALE_INVERSE = "12"  # the float32 inverse does not belong to the scale
    NBLOCKS = "13"
    GROUPS = "14"  # ngroups is not what mode and shape give
    PARAM = "15"  # range_max, error bound, or a mask frame's 0
    EB_SCALE = "15a"  # an eb frame's scale does not fit its error bound
    TRUNCATED = "16"
    TRAILING = "17"
    TRAILER_RESERVED = "17a"
    BODY_CRC = "18"
    LENGTH = "19"  # the trailer's frame length
    STATUS = "20"  # the producer's status
    INDEX_ENTRY = "21"
    INDEX_SUM = "22"
    CODED_MASK = "23"  # empty or non-minimal mask
    MASK_TRAILING = "24"
    CODED_SHORT = "25"  # shorter than its width nibbles
    CODED_LENGTH = "26"
    SFPR8_RANGE = "27"
    DENSE_LENGTH = "28"

    @property
    def block(self) -> bool:
        """Whether a block decoder makes this check (23 on), not ``parse_frame``."""
        return int(self.value.rstrip("a")) >= 23


class FrameError(ValueError):
    """A frame is corrupted, truncated, foreign or of a newer format version.

    The message names what is wrong; ``check`` names which check of docs/format.md section 10
    failed (a ``Check``; ``None`` only where a card reports a bad frame without saying which),
    ``block`` the block a decoder rejected (or ``None``). A decoder never returns data from a
    frame that raised this.
    """

    def __init__(self, message: str, *, check: Check | None, block: int | None = None):
        super().__init__(message)
        self.check = check
        self.block = block

    def __reduce__(self):
        # BaseException pickles as cls(*args), which would lose the keyword-only fields
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls, args, state):
    exc = cls.__new__(cls, *args)
    BaseException.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc
