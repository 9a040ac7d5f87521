"""privlab.png against an independent decoder (Pillow, which matplotlib depends on)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from privlab.png import PREFIX, png_data_uri, to_uint8


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 5), (7, 4)])
def test_pillow_decodes_the_same_pixels(shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(0).random(shape)
    uri = png_data_uri(image)
    assert uri.startswith(PREFIX)
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri[len(PREFIX) :]))))
    expected = np.round(image * 255).astype(np.uint8)
    expected = (
        np.transpose(expected, (1, 2, 0)) if shape[0] == 3 else expected.reshape(decoded.shape)
    )
    assert np.array_equal(decoded, expected)


def test_values_outside_the_unit_range_are_clipped() -> None:
    assert to_uint8(np.array([[-1.0, 2.0]])).tolist() == [[0, 255]]
    with pytest.raises(ValueError, match="channels"):
        to_uint8(np.zeros((2, 3, 3)))
