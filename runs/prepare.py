"""Prepares a TFDS dataset once, so that xjax can read it without TensorFlow.

  python -m runs.prepare mnist --manual_dir /path/to/mnist_files --data_dir /path/to/tfds_data

With --manual_dir, the files TFDS registers for the dataset (names and sizes are checked first; the
error lists what is missing) are taken from that folder and nothing is downloaded. Without it, TFDS
downloads them. --data_dir defaults to $TFDS_DATA_DIR, else ~/tensorflow_datasets. Needs TensorFlow
(`pip install tensorflow-cpu`); see xjax/data/tfds_data.py.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

from xjax.errors import XjaxError


def _parse(argv: list[str] | None) -> argparse.Namespace:
  from xjax.data import tfds_data  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog="python -m runs.prepare",
                                   description=__doc__.split("\n", 1)[0])
  parser.add_argument("name", help=f"TFDS dataset: one of {', '.join(tfds_data.SUPPORTED)}")
  parser.add_argument("--manual_dir", default=None,
                      help="folder with the dataset's original files (no download)")
  parser.add_argument("--data_dir", default=None,
                      help="where to write the prepared dataset (default: $TFDS_DATA_DIR or "
                      "~/tensorflow_datasets)")
  return parser.parse_args(argv)


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB.


def main(argv: list[str] | None = None) -> int:
  args = _parse(argv)
  from xjax.data import tfds_data  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  try:
    data_dir = tfds_data.resolve_data_dir(args.data_dir)
    already = tfds_data.is_prepared(args.name, data_dir)
    path = tfds_data.prepare(args.name, data_dir=data_dir, manual_dir=args.manual_dir)
  except XjaxError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  seconds = time.perf_counter() - start
  if already:
    print(f"{args.name}: already prepared in {path} ({seconds:.1f} s)")
  else:
    source = "manual_dir " + args.manual_dir if args.manual_dir else "downloads"
    print(f"{args.name}: prepared from {source} into {path} in {seconds:.1f} s "
          f"(peak RSS {_peak_rss_mb():.0f} MB; downloaded and extracted files in "
          f"{data_dir / 'downloads' / args.name})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
