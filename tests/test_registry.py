"""The registry mechanism: names, option names and option values, each wrong one a ConfigError."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from xjax import registry as r
from xjax.errors import ConfigError


@pytest.fixture()
def shapes() -> r.Registry:
  shapes = r.Registry("shape")

  @shapes.register("square", checks={"side": r.positive, "color": r.one_of("red", "blue")},
                   polygon=True)
  def square(side: float, color: str = "red"):
    return ("square", side, color)

  shapes.register("circle", lambda radius=1.0: ("circle", radius))
  return shapes


def test_registration_by_decorator_and_by_call(shapes):
  assert shapes.names() == ("square", "circle") and list(shapes) == ["square", "circle"]
  assert "square" in shapes and "triangle" not in shapes and len(shapes) == 2
  assert shapes.get("square", side=2.0) == ("square", 2.0, "red")
  assert shapes.get("circle") == ("circle", 1.0)
  assert shapes["square"].__name__ == "square"  # the decorator returns the function itself
  assert shapes.metadata("square") == {"polygon": True} and shapes.metadata("circle") == {}
  assert shapes.options("square") == ("side", "color")


def test_an_unknown_name_lists_the_known_ones(shapes):
  with pytest.raises(ConfigError, match=r"^Unknown shape 'triangle'; known shapes: circle, "
                     r"square\.$"):
    shapes.get("triangle")
  with pytest.raises(ConfigError, match="Unknown shape 'triangle'"):
    shapes.metadata("triangle")


def test_an_unknown_option_lists_the_valid_ones(shapes):
  with pytest.raises(ConfigError, match=r"Shape 'square' does not take the options \['size'\]; "
                     r"valid options: side, color\."):
    shapes.get("square", size=2.0)
  with pytest.raises(ConfigError, match="needs the options \\['side'\\]"):
    shapes.get("square")


@pytest.mark.parametrize("options, message", [
    ({"side": -1.0}, "Bad value -1.0 for option 'side' of shape 'square': expected a finite "
                     "number > 0."),
    ({"side": math.inf}, "Bad value inf for option 'side'"),
    ({"side": "2"}, "Bad value '2' for option 'side'"),
    ({"side": 1.0, "color": "green"}, "'color' of shape 'square': expected one of red, blue."),
])
def test_a_bad_value_says_what_is_expected(shapes, options, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    shapes.get("square", **options)


def test_duplicate_registration_is_an_error(shapes):
  with pytest.raises(ValueError, match="registered twice"):
    shapes.register("circle", lambda radius=2.0: None)


def test_checks_must_name_options_of_the_factory():
  with pytest.raises(ValueError, match="options it does not take: \\['size'\\]"):
    r.Registry("shape").register("dot", lambda: None, checks={"size": r.positive})


def test_positional_arguments_are_not_options():
  sources = r.Registry("source")
  sources.register("folder", lambda root, split, cache=False: (root, split, cache))
  assert sources.options("folder", positional=2) == ("cache",)
  assert sources.get("folder", "/data", "train", cache=True) == ("/data", "train", True)
  with pytest.raises(ConfigError, match="does not take the options \\['root'\\]; valid options: "
                     "cache"):
    sources.check("folder", {"root": "/data"}, positional=2)


def test_a_factory_with_kwargs_takes_any_option():
  anything = r.Registry("thing")
  anything.register("any", lambda **options: options)
  assert anything.options("any") is None and anything.get("any", a=1) == {"a": 1}


def test_modules_register_at_the_first_lookup(monkeypatch):
  imported = []
  monkeypatch.setattr(r.importlib, "import_module", imported.append)
  lazy = r.Registry("thing", modules=("a.b", "c"))
  lazy.register("x", lambda: 1)
  assert imported == []
  assert lazy.names() == ("x",) and imported == ["a.b", "c"]
  assert "x" in lazy and imported == ["a.b", "c"]  # once


def test_modules_fix_the_order_whatever_was_imported_first(monkeypatch):
  # Entries of the listed modules in their order, then the others in the order of registration,
  # so that a table or a CLI's help does not depend on which module a program imported first.
  monkeypatch.setattr(r.importlib, "import_module", lambda module: None)
  ordered = r.Registry("thing", modules=("first", "second"))
  for module, name in [("plugin", "p"), ("second", "s1"), ("first", "f"), ("second", "s2")]:
    exec(f"registry.register({name!r}, lambda: 1)", {"__name__": module, "registry": ordered})
  assert ordered.names() == ("f", "s1", "s2", "p")
  assert [name for name, _ in ordered.items()] == list(ordered) == ["f", "s1", "s2", "p"]


EXPECTED_NAMES = {
    "xjax.metrics.registry:METRICS": (
        "pixel_flipping", "faithfulness_area", "region_perturbation", "insertion_deletion",
        "faithfulness_correlation", "completeness", "model_parameter_randomisation",
        "random_logit", "diffusion", "max_sensitivity", "avg_sensitivity", "pointing_game",
        "attribution_localisation", "relevance_mass_accuracy", "relevance_rank_accuracy",
        "sparseness", "complexity"),
    "xjax.nn.registry:MODELS": (
        "cnn_cifar10", "cnn_fashion", "cnn_mnist", "sumpool_cnn", "mlp", "resnet18", "vgg", "xnet",
        "gaussian_rbm", "adversarial_autoencoder", "vit", "bert", "llama", "explainer"),
    "xjax.data.registry:DATASETS": (
        "shapes", "planted_text", "mnist", "fashion_mnist", "cifar10", "celeb_a",
        "caltech_birds2011", "celeb_a_local", "caltech_birds2011_local"),
}


@pytest.mark.parametrize("first", ["xjax.metrics.complexity", "xjax.nn.aae",
                                   "xjax.data.cub_folder"])  # one of each registry first
def test_the_registries_are_complete_and_in_order_on_any_import_path(first):
  # In a fresh interpreter, importing one registering module first (or none): every entry is
  # there, in the same order. The plug-ins (the model explainer) come last, once imported.
  code = "\n".join([
      "import importlib",
      f"if {first!r}: importlib.import_module({first!r})",
      "import xjax.plugins",
      f"for spec in {list(EXPECTED_NAMES)!r}:",
      "  module, name = spec.split(':')",
      "  print(','.join(getattr(importlib.import_module(module), name).names()))",
  ])
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=600, check=False)
  assert done.returncode == 0, done.stderr
  names = [tuple(line.split(",")) for line in done.stdout.strip().splitlines()]
  assert names == list(EXPECTED_NAMES.values())


@pytest.mark.parametrize("check, good, bad", [
    (r.positive, [1e-9, 3, 2.5], [0, -1, math.nan, math.inf, True, None, "1"]),
    (r.non_negative, [0, 0.0, 7], [-1e-9, math.nan, -math.inf]),
    (r.in_range(0, 1, include_high=False), [0, 0.5, 0.999], [1, 1.0, -0.1, math.nan]),
    (r.in_range(0, 1, include_low=False), [1, 0.5, 1e-9], [0, 1.1]),
    (r.at_least(1), [1, 2, 10.0], [0, 0.99, math.inf]),
    (r.one_of("a", "b"), ["a", "b"], ["c", None, ["a"]]),
])
def test_check_helpers(check, good, bad):
  assert all(check(v) for v in good) and not any(check(v) for v in bad)


def test_check_requirements_read_well():
  assert r.in_range(0, 1, include_high=False).requirement == "a number in [0, 1)"
  assert r.in_range(0, 1, include_low=False).requirement == "a number in (0, 1]"
  assert r.one_of("constant", "step").requirement == "one of constant, step"
