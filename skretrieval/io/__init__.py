"""Image inputs: reading ``X``, decoding files."""

from ._decode import IMAGE_SUFFIXES, list_image_files, list_labelled_images, load_image
from ._inputs import FeatureInput, ImageInput, read_feature_file, read_input, to_rgb, to_unit_float
from ._untrusted import FileFormatError

__all__ = [
    "IMAGE_SUFFIXES",
    "FeatureInput",
    "FileFormatError",
    "ImageInput",
    "list_image_files",
    "list_labelled_images",
    "load_image",
    "read_feature_file",
    "read_input",
    "to_rgb",
    "to_unit_float",
]
