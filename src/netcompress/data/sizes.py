"""The range of image sizes netcompress accepts, checked in one place."""

from __future__ import annotations

import operator

from ..errors import NetcompressError

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 4096


def check_image_size(value, field: str, hint: str = "the course used 256") -> int:
    """`value` as an int when it is a whole number of pixels in 8..4096, else a NetcompressError naming `field`
    (and `hint`, e.g. what another value such as 0 or None means there)."""
    try:
        size = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        size = None
    if size is None:
        raise NetcompressError(f"{field} = {value!r} must be a whole number of pixels in "
                               f"{MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} ({hint})")
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise NetcompressError(f"{field} = {size} must lie in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} ({hint})")
    return size
