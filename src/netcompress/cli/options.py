"""Options whose values are checked as the command line is read, before a verb starts any work."""

from __future__ import annotations

import typer

from ..data.sizes import check_image_size


def checked_image_size(value: int | None) -> int | None:
    """--image-size when given must be a size netcompress takes: 0 is not "the default", leaving it out is."""
    return None if value is None else check_image_size(value, "--image-size", "leave it out for the model's own size")


def model_size_option(help: str = "Default: the model's input size.") -> typer.models.OptionInfo:
    return typer.Option(None, "--image-size", callback=checked_image_size, help=help)
