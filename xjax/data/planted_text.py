"""A built-in planted-truth text task: token sequences whose label only a few planted tokens decide.

Generated from a seed like `xjax.data.shapes` (no download, a few milliseconds per thousand
sequences). Every sequence is `[CLS] body... [END]` of `length` T token ids, and comes with its
ground truth: `mask` (n, T) is 1 exactly at the tokens that decide the label. Two forms (the
option `form`):

  keywords   Each class c owns `tokens_per_class` key tokens. A sequence of class c holds
             `num_keys` key tokens of class c (each drawn uniformly from the class's keys, with
             repetition) at distinct uniformly random body positions; every other body position
             holds a filler token drawn uniformly from the fillers. mask = the key positions.
  agreement  Long-range agreement, after the subject-verb agreement task of Linzen, Dupoux &
             Goldberg ("Assessing the ability of LSTMs to learn syntax-sensitive dependencies",
             TACL 2016). Each class owns `tokens_per_class` noun tokens. A sequence of class c has
             the marker [MARK] at a random position p in 1..3 and its subject, a noun of class c,
             right after it at p + 1 (the first noun of the sequence); then, at uniformly random
             positions between the subject and [END], `num_nouns` other nouns, among fillers.
             The other nouns' classes are drawn independently of the label, with every class
             present at least once (K of them, one per class, the rest uniform over the K
             classes), so every sequence has at least one attractor (a noun of another class
             than the subject's) between the subject and the end, where a decoder reads the
             decision. mask = the subject position.

Why the mask is the only evidence. In both forms the label is a function of the masked tokens
alone (any one key token names its class; the subject's class is the label), and everything
outside the mask (the marker's position, the fillers, the other nouns' positions, classes and
tokens, the key positions themselves) is drawn independently of the label: given the tokens
outside the mask, every class is equally likely. So a classifier that is right more often than
chance reads the masked tokens, and an explanation that points elsewhere points at tokens that
cannot have decided. In `agreement` the attractors cannot decide the label (their classes are
independent of it), and a bag-of-tokens model cannot count its way to it: the subject adds one
to its class's count among `num_nouns` + 1 nouns whose other classes are random, so the best
count-based guess (the majority class, which is the Bayes rule on the counts) is right in 66% of
the sequences with 2 classes and the default 8 other nouns (`counting_accuracy`); a model must
find the noun after [MARK] to do better. In `keywords` counting suffices: that form asks for
local evidence, `agreement` for evidence carried across the sequence by attention.

What the data cannot promise is which tokens a trained model uses: with two classes of
`keywords`, "no key of A" is the same as "keys of B", so a model may learn A's keys and call B by
default, and then no token is its evidence for B (the 2-layer BERT of
`runs/configs/planted_text.py:bert` still says B, with margin 9, when B's keys are replaced by
[MASK], while A flips). Score explanations per class.

Vocabulary (ids; `token_names` gives the names, `info.token_names` too):

  0        [PAD]   padding: never generated (for models and metrics that pad)
  1        [CLS]   position 0 of every sequence (BERT's classifier reads it)
  2        [MASK]  never generated: a token to replace others by (a perturbation baseline)
  3        [MARK]  the subject marker (agreement only)
  4        [END]   position T - 1 of every sequence (a decoder reads its decision there)
  5 ...    class tokens, `tokens_per_class` m per class: class c owns 5 + c m .. 5 + (c + 1) m - 1,
           named "A0", "A1", ... for class 0 ("A"), "B0", ... for class 1, ...
  the rest filler tokens "w0", "w1", ... (at least 4), which carry no class information.

Fields (see `xjax.data.source`; `info.vocab_size` set, `info.image_shape` = (T,)):

  image   int32 (n, T)  the token ids.
  label   int32 (n,)    the class; labels are exactly balanced (a random permutation of
                        0, 1, ..., K-1, 0, 1, ...).
  index   int64 (n,)
  mask    uint8 (n, T)  1 at the deciding tokens: `num_keys` per sequence (keywords), 1 (agreement).
"""

from __future__ import annotations

import math
import string

import numpy as np

from xjax.data.registry import DATASETS
from xjax.data.source import DatasetInfo
from xjax.errors import ConfigError
from xjax.registry import integer, one_of

FORMS = ("keywords", "agreement")
SPLIT_SIZES = {"train": 10000, "validation": 1000, "test": 2000}
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
_STREAM_TAG = 0x7E47  # separates this dataset's random streams from other seeded generators
PAD, CLS, MASK, MARK, END = 0, 1, 2, 3, 4
RESERVED = ("[PAD]", "[CLS]", "[MASK]", "[MARK]", "[END]")
MIN_FILLERS = 4
MAX_MARKER = 3  # the marker stands at a position in 1..MAX_MARKER (agreement): near the start
DEFAULT_NUM_KEYS, DEFAULT_NUM_NOUNS = 3, 8


def class_tokens(num_classes: int, tokens_per_class: int) -> np.ndarray:
  """(K, m) ids: row c holds the key tokens (keywords) or nouns (agreement) of class c."""
  return len(RESERVED) + np.arange(num_classes * tokens_per_class).reshape(num_classes, -1)


def token_names(vocab_size: int, num_classes: int, tokens_per_class: int) -> tuple[str, ...]:
  """The name of every id (see the module docstring)."""
  classes = tuple(f"{string.ascii_uppercase[c]}{i}" for c in range(num_classes)
                  for i in range(tokens_per_class))
  num_fillers = vocab_size - len(RESERVED) - len(classes)
  return RESERVED + classes + tuple(f"w{i}" for i in range(num_fillers))


def counting_accuracy(num_nouns: int, num_classes: int = 2) -> float:
  """The accuracy of the best bag-of-tokens guess on `agreement`: the majority class among the
  nouns (ties split evenly), in closed form for 2 classes.

  With every class present once among the other nouns and the remaining `num_nouns - 2` of
  random class, the subject's class has 2 + B of the nouns, B ~ Binomial(num_nouns - 2, 1/2),
  the other class num_nouns - 1 - B: the majority is right when 2 B > num_nouns - 3. (With 2
  classes the counts are the bag's sufficient statistic and the majority is the Bayes rule.)
  """
  if num_classes != 2:
    raise ValueError(f"counting_accuracy is in closed form for 2 classes, got {num_classes}")
  n = num_nouns - 2
  p = [math.comb(n, b) / 2 ** n for b in range(n + 1)]
  return float(sum(p[b] * (1.0 if 2 * b > n - 1 else 0.5 if 2 * b == n - 1 else 0.0)
                   for b in range(n + 1)))


def generate(rng: np.random.Generator, n: int, *, form: str, length: int, vocab_size: int,
             num_classes: int, tokens_per_class: int, num_keys: int, num_nouns: int
             ) -> dict[str, np.ndarray]:
  """`n` sequences of `form` (the module docstring) from `rng`: image, label and mask."""
  rows = np.arange(n)[:, None]
  label = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
  tokens = class_tokens(num_classes, tokens_per_class)
  first_filler = len(RESERVED) + tokens.size
  ids = rng.integers(first_filler, vocab_size, (n, length)).astype(np.int32)
  ids[:, 0], ids[:, -1] = CLS, END
  mask = np.zeros((n, length), np.uint8)
  body = np.arange(1, length - 1)  # positions between [CLS] and [END]
  if form == "keywords":
    # Distinct uniform positions: the first `num_keys` of a random order of the body.
    where = body[np.argsort(rng.random((n, body.size)), axis=1)[:, :num_keys]]
    ids[rows, where] = tokens[label[:, None], rng.integers(0, tokens_per_class, (n, num_keys))]
    mask[rows, where] = 1
  else:
    marker = rng.integers(1, MAX_MARKER + 1, n)
    subject = marker + 1
    ids[np.arange(n), marker] = MARK
    ids[np.arange(n), subject] = tokens[label, rng.integers(0, tokens_per_class, n)]
    mask[np.arange(n), subject] = 1
    # The other nouns at distinct uniform positions after the subject (keys at or before it are
    # pushed behind every valid one, so the first `num_nouns` of the order are all after it).
    keys = rng.random((n, body.size)) + (body[None] <= subject[:, None])
    where = body[np.argsort(keys, axis=1)[:, :num_nouns]]
    # Their classes: one of each class (every sequence has an attractor), the rest uniform, in a
    # random order; independent of the label.
    classes = np.concatenate([np.broadcast_to(np.arange(num_classes), (n, num_classes)),
                              rng.integers(0, num_classes, (n, num_nouns - num_classes))], 1)
    classes = rng.permuted(classes, axis=1)
    ids[rows, where] = tokens[classes, rng.integers(0, tokens_per_class, (n, num_nouns))]
  return {"image": ids, "label": label, "mask": mask}


@DATASETS.register("planted_text", checks={
    "form": one_of(*FORMS), "length": integer(4), "vocab_size": integer(8),
    "num_classes": integer(2, len(string.ascii_uppercase)), "tokens_per_class": integer(1),
    "seed": integer(0)})
class PlantedTextSource:
  """One split of the planted-text task (see the module docstring), generated once and cached.

  Args:
    split: "train", "validation" or "test".
    num_examples: number of sequences; None gives SPLIT_SIZES[split] (10000, 1000, 2000).
    form: "keywords" (local evidence) or "agreement" (long-range, with attractors).
    length: T, the sequence length, [CLS] and [END] included.
    vocab_size: the number of token ids: 5 reserved, K * `tokens_per_class` class tokens and the
      fillers (at least 4).
    num_classes: K, the classes "A", "B", ...
    tokens_per_class: m, the key tokens (keywords) or nouns (agreement) of each class.
    num_keys: keywords only: key tokens per sequence (None: 3), at most T - 3 (one filler left).
    num_nouns: agreement only: nouns besides the subject (None: 8), at least K (one of each class)
      and at most T - MAX_MARKER - 3 (they stand between the subject and [END]).
    seed: non-negative int; with `split` it determines every array.
  """

  def __init__(self, split: str = "train", num_examples: int | None = None, *,
               form: str = "keywords", length: int = 24, vocab_size: int = 48,
               num_classes: int = 2, tokens_per_class: int = 4, num_keys: int | None = None,
               num_nouns: int | None = None, seed: int = 0):
    if split not in SPLIT_SIZES:
      raise ConfigError(f"unknown planted_text split {split!r}; valid splits: "
                        f"{', '.join(SPLIT_SIZES)}")
    if form not in FORMS:
      raise ConfigError(f"unknown planted_text form {form!r}; valid forms: {', '.join(FORMS)}")
    num_examples = SPLIT_SIZES[split] if num_examples is None else num_examples
    if num_examples < 1:
      raise ConfigError(f"planted_text num_examples must be a positive int or None, got "
                        f"{num_examples}")
    needed = len(RESERVED) + num_classes * tokens_per_class + MIN_FILLERS
    if vocab_size < needed:
      raise ConfigError(f"planted_text vocab_size must be >= {needed} (5 reserved ids, "
                        f"{num_classes} x {tokens_per_class} class tokens, {MIN_FILLERS} "
                        f"fillers), got {vocab_size}")
    if form == "keywords":
      if num_nouns is not None:
        raise ConfigError("planted_text num_nouns applies to form='agreement' only; the keywords "
                          "form takes num_keys")
      num_keys = DEFAULT_NUM_KEYS if num_keys is None else num_keys
      if not 1 <= num_keys <= length - 3:
        raise ConfigError(f"planted_text num_keys must be in 1..length - 3 = {length - 3} "
                          f"(one filler left), got {num_keys}")
    else:
      if num_keys is not None:
        raise ConfigError("planted_text num_keys applies to form='keywords' only; the agreement "
                          "form takes num_nouns")
      num_nouns = DEFAULT_NUM_NOUNS if num_nouns is None else num_nouns
      if not num_classes <= num_nouns <= length - MAX_MARKER - 3:
        raise ConfigError(f"planted_text num_nouns must be in num_classes..length - "
                          f"{MAX_MARKER + 3} = {num_classes}..{length - MAX_MARKER - 3} (one noun "
                          f"of each class, all between the subject and [END]), got {num_nouns}")
    if seed < 0:
      raise ConfigError(f"planted_text seed must be a non-negative int, got {seed}")
    self.split, self.num_examples, self.form = split, int(num_examples), form
    self.length, self.vocab_size, self.num_classes = int(length), int(vocab_size), int(num_classes)
    self.tokens_per_class, self.seed = int(tokens_per_class), int(seed)
    self.num_keys, self.num_nouns = num_keys, num_nouns
    self.token_names = token_names(self.vocab_size, self.num_classes, self.tokens_per_class)
    self.info = DatasetInfo(
        name="planted_text", image_shape=(self.length,), num_classes=self.num_classes,
        class_names=tuple(string.ascii_uppercase[:self.num_classes]),
        fields=("image", "label", "index", "mask"), vocab_size=self.vocab_size,
        token_names=self.token_names)
    rng = np.random.default_rng(np.random.SeedSequence((_STREAM_TAG, self.seed,
                                                        _SPLIT_IDS[split], FORMS.index(form))))
    self._arrays = generate(rng, self.num_examples, form=form, length=self.length,
                            vocab_size=self.vocab_size, num_classes=self.num_classes,
                            tokens_per_class=self.tokens_per_class, num_keys=num_keys or 0,
                            num_nouns=num_nouns or 0)

  def __len__(self) -> int:
    return self.num_examples

  def read_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Returns the records at `indices` (1-D int array), copies of the cached arrays."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= self.num_examples):
      raise IndexError(f"planted_text indices must be in [0, {self.num_examples}), got "
                       f"[{indices.min()}, {indices.max()}]")
    batch = {name: array[indices] for name, array in self._arrays.items()}
    batch["index"] = indices
    return batch

  def decode(self, ids: np.ndarray) -> list[str]:
    """The token names of one sequence of ids (T,), e.g. for a figure's labels."""
    return [self.token_names[int(i)] for i in np.asarray(ids).reshape(-1)]

  def __repr__(self) -> str:
    extra = (f"num_keys={self.num_keys}" if self.form == "keywords"
             else f"num_nouns={self.num_nouns}")
    return (f"PlantedTextSource(split={self.split!r}, num_examples={self.num_examples}, "
            f"form={self.form!r}, length={self.length}, vocab_size={self.vocab_size}, "
            f"num_classes={self.num_classes}, tokens_per_class={self.tokens_per_class}, "
            f"{extra}, seed={self.seed})")
