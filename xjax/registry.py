"""One registry mechanism for everything a config names: models, datasets, loss terms, optimizers.

A `Registry` maps names to factories. `register` adds one, as a decorator or as a call, with
checks on the values of its options and free-form metadata (e.g. `penalty=True`):

    OPTIMIZERS = Registry("optimizer")

    @OPTIMIZERS.register("sgd", checks={"learning_rate": positive})
    def sgd(learning_rate: float, momentum: float = 0.9): ...

`OPTIMIZERS.get("sgd", learning_rate=0.1)` checks the name, the option names (against the
factory's signature) and the values, then calls the factory. Every mistake of a config is a
one-line `ConfigError` that lists what would have been valid.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from xjax.errors import ConfigError

_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclasses.dataclass(frozen=True)
class Check:
  """A test of an option's value, and what it requires (for the error message)."""

  test: Callable[[Any], bool]
  requirement: str

  def __call__(self, value: Any) -> bool:
    try:
      return bool(self.test(value))
    except (TypeError, ValueError):
      return False


def _finite(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


positive = Check(lambda v: _finite(v) and v > 0, "a finite number > 0")
non_negative = Check(lambda v: _finite(v) and v >= 0, "a finite number >= 0")


def at_least(low: float) -> Check:
  """A finite number >= `low`."""
  return Check(lambda v: _finite(v) and v >= low, f"a number >= {low}")


def in_range(low: float, high: float, *, include_low: bool = True,
             include_high: bool = True) -> Check:
  """A finite number between `low` and `high`, each end included or not: e.g. [0, 1)."""
  interval = f"{'[' if include_low else '('}{low}, {high}{']' if include_high else ')'}"
  return Check(lambda v: _finite(v) and (low <= v if include_low else low < v)
               and (v <= high if include_high else v < high), f"a number in {interval}")


def integer(low: int, high: int | None = None) -> Check:
  """An int (not a bool; numpy's too) >= `low`, and <= `high` when one is given."""
  bound = at_least(low) if high is None else in_range(low, high)
  text = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
  return Check(lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and bound(v),
               text)


def optional(check: Check) -> Check:
  """None, or what `check` accepts."""
  return Check(lambda v: v is None or check(v), f"None or {check.requirement}")


boolean = Check(lambda v: isinstance(v, (bool, np.bool_)), "True or False")


def one_of(*choices: Any) -> Check:
  """One of `choices`."""
  return Check(lambda v: v in choices, f"one of {', '.join(map(str, choices))}")


class Registry:
  """Factories by name for one kind of thing ("model", "loss term", ...); see the module docstring.

  Args:
    kind: what the names name, in the singular; error messages say "Unknown <kind> 'x'".
    modules: modules that register further entries (with the decorator, at their definitions),
      imported at the first lookup (so that the registry is complete without importing them, and
      their imports, when it is defined). They also fix the order of `names()`: the entries of
      these modules in this order, each module's in the order it registers them, then those of
      any other module in the order of registration; so the order (of tables, of a CLI's help)
      does not depend on which module a program happened to import first.
    hint: added to the unknown-name error, e.g. where further entries come from.
  """

  def __init__(self, kind: str, modules: Sequence[str] = (), hint: str = ""):
    self.kind, self.hint = kind, f" ({hint})" if hint else ""
    self._modules = tuple(modules)
    self._rank = {module: i for i, module in enumerate(self._modules)}
    self._module_of: dict[str, str] = {}  # name -> the module that registered it
    self._objects: dict[str, Any] = {}
    self._checks: dict[str, Mapping[str, Check]] = {}
    self._metadata: dict[str, Mapping[str, Any]] = {}

  def register(self, name: str, obj: Any = None, *, checks: Mapping[str, Check] | None = None,
               **metadata: Any) -> Any:
    """Registers `obj` as `name`; without `obj`, a decorator that registers what it decorates.

    Args:
      name: the name configs use.
      obj: the factory (a function or class); None: return a decorator.
      checks: option name -> `Check` of its value, applied by `get`.
      **metadata: facts about the entry, read back by `metadata(name)` (e.g. `penalty=True`).

    Returns:
      `obj` (so the decorator leaves the decorated object as it is), or the decorator.

    Raises:
      ValueError: `name` is taken, or `checks` names an option the factory does not take.
    """
    if obj is None:
      return lambda decorated: self.register(name, decorated, checks=checks, **metadata)
    if name in self._objects:
      raise ValueError(f"{self.kind} {name!r} is registered twice ({self._objects[name]!r} and "
                       f"{obj!r}).")
    checks, valid = dict(checks or {}), _options(obj)
    unchecked = [] if valid is None else sorted(set(checks) - set(valid))
    if unchecked:
      raise ValueError(f"checks of {self.kind} {name!r} name options it does not take: {unchecked}")
    self._objects[name], self._checks[name], self._metadata[name] = obj, checks, dict(metadata)
    self._module_of[name] = _registering_module()
    return obj

  def _load(self) -> None:
    while self._modules:
      module, self._modules = self._modules[0], self._modules[1:]
      importlib.import_module(module)

  def _known(self, name: str) -> str:
    """`name`, or a `ConfigError` listing the known names."""
    self._load()
    if name not in self._objects:
      raise ConfigError(f"Unknown {self.kind} {name!r}; known {self.kind}s: "
                        f"{', '.join(sorted(self._objects))}{self.hint}.")
    return name

  def __getitem__(self, name: str) -> Any:
    """The registered factory itself. Raises `ConfigError` for an unknown name."""
    return self._objects[self._known(name)]

  def options(self, name: str, positional: int = 0) -> tuple[str, ...] | None:
    """The options `name` takes by keyword, less its first `positional` parameters; None: any."""
    return _options(self[name], positional)

  def metadata(self, name: str) -> Mapping[str, Any]:
    """What `register` was told about `name` besides its factory and checks."""
    return self._metadata[self._known(name)]

  def check(self, name: str, options: Mapping[str, Any], positional: int = 0) -> None:
    """Raises `ConfigError` for an option `name` does not take or lacks, or a bad value."""
    valid = self.options(name, positional)
    unknown = [] if valid is None else sorted(set(options) - set(valid))
    if unknown:
      takes = f"valid options: {', '.join(valid)}" if valid else "it takes no options"
      raise ConfigError(f"{self.kind.capitalize()} {name!r} does not take the options {unknown}; "
                        f"{takes}.")
    missing = [p for p in _required(self[name], positional) if p not in options]
    if missing:
      raise ConfigError(f"{self.kind.capitalize()} {name!r} needs the options {missing}.")
    for option, check in self._checks[name].items():
      if option in options and not check(options[option]):
        raise ConfigError(f"Bad value {options[option]!r} for option {option!r} of {self.kind} "
                          f"{name!r}: expected {check.requirement}.")

  def get(self, name: str, *args: Any, **options: Any) -> Any:
    """`factory(*args, **options)` after `check`: the thing a config names, built."""
    self.check(name, options, positional=len(args))
    return self[name](*args, **options)

  def names(self) -> tuple[str, ...]:
    """The registered names, in the order of registration (by `modules` first, see the class)."""
    self._load()
    last = len(self._rank)
    # sorted() is stable: within one rank, the order of registration.
    return tuple(sorted(self._objects, key=lambda n: self._rank.get(self._module_of[n], last)))

  def items(self) -> tuple[tuple[str, Any], ...]:
    """(name, factory) pairs, in the order of `names()`."""
    return tuple((name, self._objects[name]) for name in self.names())

  def __contains__(self, name: object) -> bool:
    self._load()
    return name in self._objects

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def __len__(self) -> int:
    return len(self.names())

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}: {', '.join(self._objects)})"


def _registering_module() -> str:
  """The name of the module whose code called `register` (the first frame outside this module:
  the decorator adds a frame of its own)."""
  frame = inspect.currentframe()
  while frame is not None and frame.f_globals.get("__name__") == __name__:
    frame = frame.f_back
  return "" if frame is None else frame.f_globals.get("__name__", "")


def _parameters(factory: Callable, positional: int = 0) -> list[inspect.Parameter] | None:
  """The parameters of `factory` that options can name (by keyword, after the first `positional`
  parameters, which the caller passes by position); None if it takes `**kwargs`."""
  parameters = list(inspect.signature(factory).parameters.values())
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
    return None
  leading = [p for p in parameters if p.kind is not inspect.Parameter.KEYWORD_ONLY][:positional]
  return [p for p in parameters if p.kind in _KEYWORD and p not in leading]


def _options(factory: Callable, positional: int = 0) -> tuple[str, ...] | None:
  parameters = _parameters(factory, positional)
  return None if parameters is None else tuple(p.name for p in parameters)


def _required(factory: Callable, positional: int = 0) -> tuple[str, ...]:
  return tuple(p.name for p in _parameters(factory, positional) or ()
               if p.default is inspect.Parameter.empty)
