"""`pad_to`: images padded with black, centred; keypoints, boxes and masks move with them."""

from __future__ import annotations

import numpy as np
import pytest

from xjax.data.registry import get_source
from xjax.errors import ConfigError

OPTIONS = dict(image_size=16, num_examples=8, num_classes=2)


def test_padding_centres_the_image_and_moves_its_annotations():
  plain = get_source("shapes", "test", **OPTIONS)
  padded = get_source("shapes", "test", pad_to=20, **OPTIONS)
  assert padded.info.image_shape == (20, 20, 3) and len(padded) == len(plain)
  a, b = plain.read_batch(np.arange(4)), padded.read_batch(np.arange(4))
  np.testing.assert_array_equal(b["image"][:, 2:18, 2:18], a["image"])
  assert b["image"].sum() == a["image"].sum()  # the border is black
  np.testing.assert_array_equal(b["mask"][:, 2:18, 2:18], a["mask"])
  np.testing.assert_allclose(b["keypoints"], a["keypoints"] + 2)
  np.testing.assert_allclose(b["bbox"], a["bbox"] + 2)
  np.testing.assert_array_equal(b["label"], a["label"])


def test_odd_padding_puts_the_extra_row_at_the_bottom_right():
  padded = get_source("shapes", "train", pad_to=19, **OPTIONS)
  assert padded.top == padded.left == 1 and padded.pads == ((1, 2), (1, 2))


@pytest.mark.parametrize("size", [14, 20.5, True])
def test_a_size_smaller_than_the_images_is_an_error(size):
  with pytest.raises(ConfigError, match="pad_to must be an int >= the images' size 16x16"):
    get_source("shapes", "train", pad_to=size, **OPTIONS)
