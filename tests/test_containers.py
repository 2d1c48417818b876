"""One image gives one feature vector whatever holds it (issue 13, defect 1).

Six scikit-image photos at 96 x 96: as a uint8 array, a float array (/ 255), a float NCHW
tensor, a torch Dataset of float tensors, PNG files and PIL images. Before every container
was resized as 8-bit pixels, floats were resized as floats and the default encoder's
features of rocket had a cosine of 0.981 to its file's.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from skretrieval import ImageEncoder, Preprocessing

skimage_data = pytest.importorskip("skimage.data")


class _FloatDataset(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def _six_photos(size=96):
    photos = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins"):
        photo = getattr(skimage_data, name)()
        if photo.ndim == 2:  # camera and coins are grey
            photo = np.stack([photo] * 3, axis=-1)
        photos.append(np.asarray(Image.fromarray(photo).resize((size, size), Image.BILINEAR)))
    return np.stack(photos)


def _cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_same_photo_in_any_container_gives_the_same_features(tmp_path):
    images = _six_photos()
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    floats = images.astype(np.float32) / 255
    tensor = torch.from_numpy(floats).permute(0, 3, 1, 2).contiguous()
    containers = {
        "uint8 array": images,
        "float array": floats,
        "float NCHW tensor": tensor,
        "Dataset of float tensors": _FloatDataset(list(tensor)),
        "PIL images": [Image.fromarray(image) for image in images],
    }
    encoder = ImageEncoder(device="cpu").fit(paths[:1])
    from_files = encoder.transform(paths)
    for name, X in containers.items():
        cosines = _cosines(encoder.transform(X), from_files)
        assert cosines.min() >= 0.999, (name, cosines)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("photo_size", [40, 16])  # shrunk (as uint8), enlarged (as floats)
def test_preprocessing_rounds_floats_to_the_pixels_a_file_holds(interpolation, photo_size):
    """A float image is preprocessed as its 8-bit pixels: the same input, bit for bit."""
    images = torch.from_numpy(_six_photos(photo_size)).permute(0, 3, 1, 2)
    prep = Preprocessing(size=24, interpolation=interpolation)
    expected = prep(images)
    torch.testing.assert_close(prep(images.float() / 255), expected, rtol=0, atol=0)
    # floats between two levels go to the nearer one
    torch.testing.assert_close(prep((images.float() + 0.3) / 255), expected, rtol=0, atol=0)


def test_an_enlarged_image_is_interpolated_without_rounding_steps():
    """Enlarging a two-level ramp: the float interpolation, not integer steps."""
    ramp = torch.tensor([[0, 255]], dtype=torch.uint8).expand(3, 2, 2)[None]  # (1, 3, 2, 2)
    prep = Preprocessing(size=(2, 64), resize_mode="stretch", mean=(0.0,), std=(1.0,))
    row = prep(ramp)[0, 0, 0]
    expected = TF.resize(ramp.float() / 255, [2, 64], antialias=True)[0, 0, 0]
    torch.testing.assert_close(row, expected)
    assert not torch.equal(row * 255, (row * 255).round())  # not rounded to uint8 levels
