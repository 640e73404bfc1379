"""Tests of xjax.data.tfds_data and runs/prepare.py.

The error paths run everywhere, with the network blocked. The MNIST tests need a prepared MNIST in
$XJAX_TFDS_DIR (python -m runs.prepare mnist --manual_dir DIR --data_dir $XJAX_TFDS_DIR).
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runs import prepare as prepare_cli
from xjax.data import tfds_data
from xjax.data.source import DatasetInfo, Source
from xjax.data.tfds_data import TfdsSource
from xjax.errors import ConfigError, DataNotFoundError, UnreadableDataError

MNIST_FILES = {
    "t10k-images-idx3-ubyte.gz": 1648877,
    "t10k-labels-idx1-ubyte.gz": 4542,
    "train-images-idx3-ubyte.gz": 9912422,
    "train-labels-idx1-ubyte.gz": 28881,
}
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_network(monkeypatch):
  """Any attempt to open a connection fails the test at once."""
  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_unknown_name():
  with pytest.raises(ConfigError,
                     match="mnist, fashion_mnist, cifar10, celeb_a, caltech_birds2011"):
    TfdsSource("imagenet", "train")
  with pytest.raises(ConfigError, match="supported"):
    tfds_data.prepare("imagenet")


def test_expected_files_from_tfds_checksums():
  assert {f.filename: f.size for f in tfds_data.expected_files("mnist")} == MNIST_FILES
  cub = {f.filename: f.size for f in tfds_data.expected_files("caltech_birds2011")}
  # Each file is registered under two URLs (mirrors); it is listed once.
  assert cub == {"CUB_200_2011.tgz": 1150585339, "segmentations.tgz": 39272883}
  assert "img_align_celeba.zip" in {f.filename for f in tfds_data.expected_files("celeb_a")}


def test_unprepared_dataset_message(tmp_path, no_network):
  with pytest.raises(DataNotFoundError) as err:
    TfdsSource("mnist", "train", data_dir=tmp_path)
  msg = str(err.value)
  assert f"not prepared in data_dir {tmp_path}" in msg
  assert f"python -m runs.prepare mnist --manual_dir DIR --data_dir {tmp_path}" in msg
  for name, size in MNIST_FILES.items():
    assert f"{name} ({size} bytes" in msg
  assert not any(tmp_path.iterdir())  # nothing was written


@pytest.mark.parametrize("name,files,alternative", [
    ("celeb_a", "img_align_celeba.zip (1443490838 bytes", "CelebAFolder"),
    ("caltech_birds2011", "CUB_200_2011.tgz (1150585339 bytes", "CubFolder"),
    ("cifar10", "cifar-10-binary.tar.gz (170052171 bytes", None),
])
def test_unprepared_large_datasets_point_to_local_folders(tmp_path, no_network, name, files,
                                                          alternative):
  with pytest.raises(DataNotFoundError) as err:
    TfdsSource(name, "train", data_dir=tmp_path)
  assert files in str(err.value)
  if alternative:
    assert "Without TFDS, use xjax.data." in str(err.value) and alternative in str(err.value)


def test_data_dir_defaults_to_env(tmp_path, monkeypatch, no_network):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "from_env"))
  assert tfds_data.resolve_data_dir() == tmp_path / "from_env"
  with pytest.raises(DataNotFoundError, match=str(tmp_path / "from_env")):
    TfdsSource("fashion_mnist", "test")


def test_prepare_checks_manual_dir_before_tfds(tmp_path, no_network):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "train-labels-idx1-ubyte.gz").write_bytes(b"x" * 100)
  with pytest.raises(DataNotFoundError) as err:
    tfds_data.prepare("mnist", data_dir=tmp_path / "data", manual_dir=manual)
  msg = str(err.value)
  assert f"from manual_dir {manual}:" in msg
  assert "train-labels-idx1-ubyte.gz (28881 bytes): has 100 bytes" in msg
  for name, size in MNIST_FILES.items():
    if name != "train-labels-idx1-ubyte.gz":
      assert f"{name} ({size} bytes): missing" in msg
  with pytest.raises(DataNotFoundError, match=r"nowhere \(which does not exist\)"):
    tfds_data.prepare("mnist", data_dir=tmp_path / "data", manual_dir=tmp_path / "nowhere")


def test_prepare_cli_error(tmp_path, capsys, no_network):
  code = prepare_cli.main(["celeb_a", "--manual_dir", str(tmp_path), "--data_dir", str(tmp_path)])
  out, err = capsys.readouterr()
  assert code == 2 and out == ""
  assert err.startswith("error: cannot prepare TFDS dataset 'celeb_a'")
  assert "img_align_celeba.zip (1443490838 bytes): missing" in err and "CelebAFolder" in err
  assert "Traceback" not in err


def test_records_to_batch_celeba_and_cub():
  """The field mapping, on hand-made records shaped like TFDS's decoded features."""
  names = ("Male", "Young")
  info = DatasetInfo("celeb_a", (109, 89, 3), 1, attribute_names=names)
  marks = {"lefteye_x": 70, "lefteye_y": 110, "righteye_x": 108, "righteye_y": 112,
           "nose_x": 89, "nose_y": 134, "leftmouth_x": 72, "leftmouth_y": 152,
           "rightmouth_x": 106, "rightmouth_y": 150}
  record = {"image": np.full((218, 178, 3), 7, np.uint8), "landmarks": marks,
            "attributes": {"Male": np.True_, "Young": np.False_}}
  batch = tfds_data.records_to_batch("celeb_a", [record], np.array([5]), info)
  assert batch["image"].shape == (1, 109, 89, 3) and (batch["image"] == 7).all()
  np.testing.assert_array_equal(batch["attributes"], np.array([[1, 0]], np.int8))
  # 218x178 -> 109x89 halves the landmarks.
  np.testing.assert_allclose(batch["keypoints"][0],
                             [[35, 55], [54, 56], [44.5, 67], [36, 76], [53, 75]])
  np.testing.assert_array_equal(batch["label"], [0])

  info = DatasetInfo("caltech_birds2011", (100, 50, 3), 200)
  record = {"image": np.zeros((300, 400, 3), np.uint8), "label": np.int64(17),
            "bbox": np.array([0.1, 0.2, 0.5, 0.9], np.float32)}  # ymin, xmin, ymax, xmax
  batch = tfds_data.records_to_batch("caltech_birds2011", [record], np.array([0]), info)
  np.testing.assert_allclose(batch["bbox"][0], [10, 10, 45, 50], rtol=1e-6)
  assert batch["label"].dtype == np.int32 and batch["label"][0] == 17


class _ItemsOnly:
  """A data source without `__getitems__` (TFDS 4.9.10's mock data source has a broken one)."""

  def __init__(self, ds):
    self.ds = ds

  def __len__(self):
    return len(self.ds)

  def __getitem__(self, key):
    return self.ds[key]


@pytest.fixture
def files_checks_pass(monkeypatch):
  """TfdsSource's checks of the prepared files pass: TFDS's mock data (`tfds.testing.mock_data`)
  has no files on disk to check."""
  monkeypatch.setattr(tfds_data, "_is_prepared", lambda builder: True)
  monkeypatch.setattr(tfds_data, "_check_random_access", lambda builder: None)
  monkeypatch.setattr(tfds_data, "_check_split", lambda *args: None)


def test_celeba_and_cub_against_tfds_mock_data(files_checks_pass):
  """The read path on TFDS's random mock examples: TFDS's real feature names and decoding."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=4):
    celeba = TfdsSource("celeb_a", "train", data_dir="/nonexistent")
    celeba._source = _ItemsOnly(celeba._data_source())
    assert isinstance(celeba, Source) and celeba.info.num_classes == 1
    assert len(celeba.info.attribute_names) == 40 and celeba.info.attribute_names[-1] == "Young"
    batch = celeba.read_batch(np.array([2, 0]))
    raw = celeba._data_source()[2]
    assert batch["image"].shape == (2, 218, 178, 3)
    np.testing.assert_array_equal(batch["image"][0], raw["image"])
    marks, attributes = raw["landmarks"], raw["attributes"]
    np.testing.assert_array_equal(batch["keypoints"][0, 2], [marks["nose_x"], marks["nose_y"]])
    np.testing.assert_array_equal(batch["attributes"][0],
                                  [attributes[a] for a in celeba.info.attribute_names])
    cub = TfdsSource("caltech_birds2011", "test", data_dir="/nonexistent")
    cub._source = _ItemsOnly(cub._data_source())
    assert cub.info.image_shape == (224, 224, 3) and cub.info.num_classes == 200
    batch = cub.read_batch(np.array([1]))
    y0, x0, y1, x1 = cub._data_source()[1]["bbox"]
    np.testing.assert_allclose(batch["bbox"][0], np.array([x0, y0, x1, y1]) * 224, rtol=1e-5)


class _Broken:
  """A data source whose records cannot be read, without array_record's inner data source."""

  def __len__(self):
    return 4

  def __getitem__(self, key):
    raise RuntimeError("Corrupted Riegeli/records file: chunk data hash mismatch\nmore detail")


def test_unreadable_records_are_one_line(files_checks_pass):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=4):
    source = TfdsSource("mnist", "train", data_dir="/nonexistent")
  source._source = _Broken()
  with pytest.raises(UnreadableDataError) as err:
    source.read_batch(np.array([1, 2]))
  msg = str(err.value)
  assert "\n" not in msg and isinstance(err.value, DataNotFoundError)
  assert "a record file of split 'train'" in msg and "chunk data hash mismatch)" in msg
  assert "python -m runs.prepare mnist --data_dir /nonexistent" in msg


# ---------------------------------------------------------------- a prepared MNIST ($XJAX_TFDS_DIR)


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
  data_dir = os.environ.get("XJAX_TFDS_DIR")
  if not data_dir:
    pytest.skip("XJAX_TFDS_DIR is not set: no prepared MNIST to read")
  if not tfds_data.is_prepared("mnist", data_dir):
    pytest.skip(f"MNIST is not prepared in XJAX_TFDS_DIR={data_dir} "
                f"(python -m runs.prepare mnist --manual_dir DIR --data_dir {data_dir})")
  return Path(data_dir)


def test_mnist(mnist_dir):
  train = TfdsSource("mnist", "train", data_dir=mnist_dir)
  test = TfdsSource("mnist", "test", data_dir=mnist_dir)
  assert isinstance(train, Source)
  assert (len(train), len(test)) == (60000, 10000)
  assert train.info.image_shape == (28, 28, 1) and train.info.num_classes == 10
  assert train.info.mean == (0.1307,) and train.info.std == (0.3081,)
  batch = train.read_batch(np.arange(60000))
  assert batch["image"].shape == (60000, 28, 28, 1) and batch["image"].dtype == np.uint8
  assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int64
  np.testing.assert_array_equal(np.bincount(batch["label"]), MNIST_TRAIN_COUNTS)
  assert abs(batch["image"].mean() / 255 - 0.1307) < 1e-3
  # The in-memory copy and a lazy read agree.
  lazy = TfdsSource("mnist", "train", data_dir=mnist_dir, in_memory=False, image_size=(28, 28))
  idx = np.array([59999, 3, 12345])
  some = lazy.read_batch(idx)
  np.testing.assert_array_equal(some["image"], batch["image"][idx])
  np.testing.assert_array_equal(some["label"], batch["label"][idx])
  np.testing.assert_array_equal(some["index"], idx)
  # A pickled source (for worker processes) reads the same.
  unpickled = pickle.loads(pickle.dumps(lazy))
  np.testing.assert_array_equal(unpickled.read_batch(idx)["image"], some["image"])
  resized = TfdsSource("mnist", "test", data_dir=mnist_dir, image_size=(32, 32), in_memory=False)
  assert resized.info.image_shape == (32, 32, 1)
  assert resized.read_batch(np.arange(4))["image"].shape == (4, 32, 32, 1)


def test_mnist_splits_and_prepare_is_idempotent(mnist_dir):
  with pytest.raises(ConfigError,
                     match=r"unknown split 'validation'.*splits: (train, test|test, train)"):
    TfdsSource("mnist", "validation", data_dir=mnist_dir)
  assert len(TfdsSource("mnist", "train[:10%]", data_dir=mnist_dir, in_memory=False)) == 6000
  # Already prepared: returns at once, without looking at manual_dir.
  path = tfds_data.prepare("mnist", data_dir=mnist_dir, manual_dir="/nonexistent")
  assert path == mnist_dir / "mnist" / "3.0.1"


def test_reading_does_not_import_tensorflow(mnist_dir):
  code = (
      "import sys, numpy as np\n"
      "from xjax.data.tfds_data import TfdsSource\n"
      f"s = TfdsSource('mnist', 'test', data_dir={str(mnist_dir)!r})\n"
      "b = s.read_batch(np.arange(8))\n"
      "assert b['image'].shape == (8, 28, 28, 1), b['image'].shape\n"
      "bad = sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.'))\n"
      "assert not bad, bad[:5]\n"
      "print('ok')\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("damage", ["truncated", "absent"])
def test_mnist_damaged_record_file(mnist_dir, tmp_path, damage):
  """A truncated or deleted array_record file: one line naming it and the command to redo it."""
  version = tmp_path / "mnist" / "3.0.1"
  version.mkdir(parents=True)
  for name in ("dataset_info.json", "features.json"):
    shutil.copy(mnist_dir / "mnist" / "3.0.1" / name, version / name)
  record = version / "mnist-test.array_record-00000-of-00001"
  if damage == "truncated":
    data = (mnist_dir / "mnist" / "3.0.1" / record.name).read_bytes()
    record.write_bytes(data[:len(data) // 2])
  for in_memory in (True, False):
    source = TfdsSource("mnist", "test", data_dir=tmp_path, in_memory=in_memory)
    with pytest.raises(UnreadableDataError) as err:
      source.read_batch(np.arange(9990, 10000))
    msg = str(err.value)
    assert "\n" not in msg
    assert f"record file {record} is missing, truncated or corrupt" in msg
    assert f"delete {version} and run `python -m runs.prepare mnist --data_dir {tmp_path}`" in msg
