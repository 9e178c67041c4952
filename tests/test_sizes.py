import numpy as np
import pytest

from netcompress.data.folder import ImageFolderData
from netcompress.data.sizes import check_image_size
from netcompress.errors import NetcompressError


def test_check_image_size_accepts_whole_numbers_in_range():
    assert check_image_size(8, "image_size") == 8
    assert check_image_size(np.int64(4096), "image_size") == 4096


@pytest.mark.parametrize("value, message", [
    (7, "image_size = 7 must lie in 8..4096 (the course used 256)"),
    (100000, "image_size = 100000 must lie in 8..4096"),
    (96.0, "image_size = 96.0 must be a whole number of pixels in 8..4096"),
    (True, "image_size = True must be a whole number"),
])
def test_check_image_size_names_the_field(value, message):
    with pytest.raises(NetcompressError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_image_size(value, "image_size")


def test_a_dataset_folder_refuses_a_size_out_of_range(tmp_path):
    with pytest.raises(NetcompressError, match="--image-size = 5 must lie in 8..4096"):
        ImageFolderData(tmp_path, 5)
    with pytest.raises(NetcompressError, match="does not exist"):  # the folder is checked first, as before
        ImageFolderData(tmp_path / "missing", 5)
