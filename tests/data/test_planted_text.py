"""The planted-text task: deterministic, its mask exactly the deciding tokens, nothing outside the
mask informative, attractors in every agreement sequence, ids through the pipeline as they are."""

from __future__ import annotations

import numpy as np
import pytest

from xjax.data import pipeline
from xjax.data import planted_text as pt
from xjax.data.registry import get_source
from xjax.errors import ConfigError

T = 20


def _source(form, split="train", n=4000, **options):
  return get_source("planted_text", split, form=form, num_examples=n, length=T, **options)


@pytest.fixture(scope="module", params=pt.FORMS)
def data(request):
  source = _source(request.param)
  return source, source.read_batch(np.arange(len(source)))


def _class_of(ids, num_classes=2, tokens_per_class=4):
  """The class of each id (-1 where the id is no class token)."""
  table = np.full(64, -1)
  for c, row in enumerate(pt.class_tokens(num_classes, tokens_per_class)):
    table[row] = c
  return table[ids]


def test_seeded_and_deterministic_like_shapes():
  a, b = _source("agreement", n=50), _source("agreement", n=50)
  batch_a, batch_b = a.read_batch(np.arange(50)), b.read_batch(np.arange(50))
  for name in ("image", "label", "mask"):
    np.testing.assert_array_equal(batch_a[name], batch_b[name])
  other_seed = _source("agreement", n=50, seed=1).read_batch(np.arange(50))
  other_split = _source("agreement", "test", n=50).read_batch(np.arange(50))
  assert not np.array_equal(batch_a["image"], other_seed["image"])
  assert not np.array_equal(batch_a["image"], other_split["image"])
  # A batch is a copy of the cached rows, in the order asked for.
  rows = a.read_batch(np.array([7, 3]))
  np.testing.assert_array_equal(rows["image"], batch_a["image"][[7, 3]])
  np.testing.assert_array_equal(rows["index"], [7, 3])


def test_records_and_vocabulary(data):
  source, batch = data
  ids, info = batch["image"], source.info
  assert ids.dtype == np.int32 and ids.shape == (4000, T) and info.image_shape == (T,)
  assert batch["mask"].dtype == np.uint8 and batch["mask"].shape == (4000, T)
  assert batch["label"].dtype == np.int32 and info.fields == ("image", "label", "index", "mask")
  assert info.vocab_size == 48 and len(info.token_names) == 48 and info.class_names == ("A", "B")
  assert info.token_names[:7] == ("[PAD]", "[CLS]", "[MASK]", "[MARK]", "[END]", "A0", "A1")
  assert info.token_names[13] == "w0" and info.token_names[-1] == "w34"
  assert np.all(ids[:, 0] == pt.CLS) and np.all(ids[:, -1] == pt.END)
  assert np.all((ids >= 0) & (ids < 48))
  assert not np.isin(ids, [pt.PAD, pt.MASK]).any()  # reserved, never generated
  assert not np.isin(ids[:, 1:-1], [pt.CLS, pt.END]).any()
  assert source.decode(ids[0])[0] == "[CLS]"


def test_labels_are_exactly_balanced(data):
  _, batch = data
  np.testing.assert_array_equal(np.bincount(batch["label"]), [2000, 2000])
  three = _source("keywords", n=301, num_classes=3).read_batch(np.arange(301))["label"]
  np.testing.assert_array_equal(np.bincount(three), [101, 100, 100])


def test_the_mask_marks_exactly_the_deciding_tokens(data):
  source, batch = data
  ids, mask, label = batch["image"], batch["mask"].astype(bool), batch["label"]
  classes = _class_of(ids)
  masked_class = np.where(mask, classes, -2)
  # Every masked token is a class token of the label's class.
  assert np.all(classes[mask] == np.repeat(label, mask.sum(1)))
  if source.form == "keywords":
    # Exactly 3 (num_keys) per sequence, and no class token outside the mask.
    assert np.all(mask.sum(1) == 3)
    assert np.all(classes[~mask] == -1)
  else:
    # Exactly one: the subject, right after [MARK] (at 1..3), the first noun of the sequence.
    assert np.all(mask.sum(1) == 1)
    subject = mask.argmax(1)
    assert np.all(ids[np.arange(len(ids)), subject - 1] == pt.MARK)
    assert set(np.unique(subject - 1)) == {1, 2, 3}
    assert np.all((ids == pt.MARK).sum(1) == 1)
    first_noun = (classes >= 0).argmax(1)
    np.testing.assert_array_equal(first_noun, subject)
  assert np.all(masked_class[mask] == np.repeat(label, mask.sum(1)))


def test_agreement_has_attractors_between_the_subject_and_the_end():
  batch = _source("agreement").read_batch(np.arange(4000))
  ids, mask, label = batch["image"], batch["mask"].astype(bool), batch["label"]
  classes = _class_of(ids)
  others = np.where(mask, -1, classes)  # the nouns besides the subject
  assert np.all((others >= 0).sum(1) == 8)  # num_nouns, by default
  attractors = (others >= 0) & (others != label[:, None])
  assert attractors.sum(1).min() >= 1  # every class among the other nouns: an attractor always
  after_subject = np.arange(T)[None] > mask.argmax(1)[:, None]
  assert np.all(after_subject[others >= 0])  # between the subject and [END]
  assert 3.5 < attractors.sum(1).mean() < 4.5  # 1 + Binomial(6, 1/2): 4 on average


def test_nothing_outside_the_mask_depends_on_the_label(data):
  # With the masked tokens replaced by [MASK], every token's count per sequence has the same mean
  # in both classes (up to sampling error: 4000 sequences, standard errors below 0.02).
  _, batch = data
  hidden = np.where(batch["mask"].astype(bool), pt.MASK, batch["image"])
  counts = np.stack([np.bincount(row, minlength=48) for row in hidden]).astype(float)
  by_class = [counts[batch["label"] == c].mean(0) for c in (0, 1)]
  assert np.abs(by_class[0] - by_class[1]).max() < 0.08
  # ... while the masked tokens alone give the label (the keys / nouns of the class).
  assert np.all(_class_of(batch["image"])[batch["mask"].astype(bool)] >= 0)


def test_counting_nouns_does_not_solve_agreement():
  # The best bag-of-tokens guess, the majority class among the nouns, at its closed form (66%).
  batch = _source("agreement", n=8000).read_batch(np.arange(8000))
  classes = _class_of(batch["image"])
  majority = np.argmax([(classes == c).sum(1) for c in (0, 1)], axis=0)
  accuracy = np.mean(majority == batch["label"])  # no ties: 9 nouns, 2 classes
  assert pt.counting_accuracy(8) == pytest.approx(42 / 64)
  assert accuracy == pytest.approx(pt.counting_accuracy(8), abs=0.02)
  assert pt.counting_accuracy(7) == pytest.approx(0.5 + 0.5 * 10 / 32)  # a tie at B = 2: halves


def test_the_pipeline_passes_ids_unnormalised():
  source = _source("keywords", n=256)
  ids = source.read_batch(np.arange(256))["image"]
  # Any normalization: it does not apply to ids (shapes' "standardize" would need a mean).
  batch = next(pipeline.train_pipeline(source, batch_size=32, seed=0,
                                       normalization="standardize").iterator())
  assert batch["image"].dtype == np.int32 and batch["image"].shape == (32, T)
  np.testing.assert_array_equal(batch["image"], ids[batch["index"]])
  evaluated = list(pipeline.eval_batches(source, batch_size=100))
  assert [b["image"].dtype for b in evaluated] == [np.int32] * 3
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in evaluated])[:256], ids)
  with pytest.raises(ConfigError, match=r"^Augmentation flips and shifts images; 'planted_text' "
                     r"is token sequences: set data.augmentation to flip=False, shift=0\.$"):
    pipeline.train_pipeline(source, batch_size=32, seed=0,
                            augmentation=pipeline.Augmentation(flip=True))


def test_images_are_normalised_as_before():
  shapes = get_source("shapes", "validation", image_size=16, num_examples=8)
  images = shapes.read_batch(np.arange(8))["image"]
  for normalization in pipeline.NORMALIZATIONS:
    mean, std = pipeline.normalization_constants(shapes.info, normalization)
    np.testing.assert_array_equal(pipeline.input_transform(shapes.info, normalization)(images),
                                  pipeline.normalize(images, mean, std))


@pytest.mark.parametrize("options, message", [
    (dict(form="sentiment"), "Bad value 'sentiment' for option 'form' of dataset 'planted_text': "
                             "expected one of keywords, agreement."),
    (dict(vocab_size=16), "planted_text vocab_size must be >= 17 (5 reserved ids, 2 x 4 class "
                          "tokens, 4 fillers), got 16"),
    (dict(length=3), "Bad value 3 for option 'length' of dataset 'planted_text'"),
    (dict(num_keys=18), "planted_text num_keys must be in 1..length - 3 = 17 (one filler left), "
                        "got 18"),
    (dict(form="agreement", num_nouns=15), "planted_text num_nouns must be in num_classes..length "
                                           "- 6 = 2..14"),
    (dict(form="agreement", num_keys=2), "planted_text num_keys applies to form='keywords' only"),
    (dict(num_nouns=2), "planted_text num_nouns applies to form='agreement' only"),
    (dict(num_examples=0), "planted_text num_examples must be a positive int or None, got 0"),
    (dict(image_size=8), "Dataset 'planted_text' does not take the options ['image_size']"),
])
def test_bad_options_are_one_line_config_errors(options, message):
  options = {"length": T, **options}
  with pytest.raises(ConfigError) as error:
    get_source("planted_text", "train", **options)
  assert message in str(error.value) and "\n" not in str(error.value)
