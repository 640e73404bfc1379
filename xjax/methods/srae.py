"""SRAE: an explanation module that embeds one network output in a few x-features.

Qi & Li, "Embedding deep networks into visual explanations" (2017). A frozen network gives, for
each image, the activations Z (S_z,) of one of its layers (fc6 of VGG19 in the paper) and one
output y-hat (a class's pre-softmax score); the features are extracted once, so this module works
on arrays Z (N, S_z) and y-hat (N,) or (N, C). The Sparse Reconstruction Autoencoder encodes Z to
an explanation space E of k x-features (the paper's k = 5), predicts `y-bar = v^T E` and decodes
E back to Z-hat, trained with Eq. 1:

  L = 1/M sum_i (v^T E_i - y-hat_i)^2 + beta / S_z sum_k log(1 + q * MSE_k),
  MSE_k = 1/M sum_i (Z-hat_ik - Z_ik)^2,

the faithfulness loss plus a log (sparsity) penalty on how well each of the S_z dimensions of Z is
reconstructed, so that E reconstructs only the part of Z that the prediction uses.

* **Architecture** [A]: "a 3 middle layers SRAE" read as three hidden layers,
  `Z -> h -> E (k) -> h -> Z-hat`, ReLU after the two h-wide layers. E is the linear output of the
  encoder's last layer (no ReLU: a ReLU code can die, and the x-features are read as weights
  `v_n E_n`, which may have either sign); Z-hat is linear (Z need not be a ReLU layer). The
  prediction is `y-bar = v^T E` without a bias, as in the paper: the encoder's last bias already
  lets v^T E carry an offset.
* **MSE_k over minibatches**: the log sits outside the mean over the data, so a batch estimate of
  MSE_k in the log is biased. `mse="batch"` uses it anyway; `mse="ema"` (default) carries a running
  average m_k of MSE_k in the training state: m_k <- d m_k + (1 - d) MSE_k(batch), the loss value
  is `log(1 + q m_k)` and its gradient `q / (1 + q m_k) * grad MSE_k(batch)`: the gradient of the
  full-data term with the (slowly moving) MSE_k in the weight taken from the average, and the
  (unbiased) batch estimate in the derivative. The step of d m_k through the batch would
  otherwise shrink the term's gradient by (1 - d). `train_modules` starts m_k at the full-data
  MSE_k of the initial parameters, so the average is not biased towards 0 early on.
* **One module per class** (one-against-all, as in the paper): C modules for C columns of y-hat
  on the same Z are trained together in one jit-compiled step, `jax.vmap` over the stacked
  parameters, optimizer states and averages (leading axis C).
* **Baselines** (the paper's Table 1): `NN`, the same encoder and v trained for the faithfulness
  loss alone (`reconstruction=False`: no decoder, beta = 0); `SAE`, a conventional stacked
  autoencoder of Z (mean squared reconstruction error only, the same encoder and decoder), with v
  then fitted on its code E by least squares (`train_sae`).
* **Faithfulness metric**: `f_reg`, F_reg = 1/M sum_m |y-bar_m - y-hat_m| (Sec. 3).

The paper gives neither h, beta, q, the optimiser nor the schedule; the defaults below are
assumptions ([A]).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xjax.errors import ConfigError
from xjax.metrics.locality import f_reg_errors

Array = jax.Array
Params = dict[str, Any]

NUM_FEATURES = 5  # k, the number of x-features: the paper's choice (Sec. 3)
# [A] Not given by the paper: a hidden width well below fc6's 4096, unit weights for the penalty.
HIDDEN = 256
BETA = 1.0
Q = 1.0
EMA_DECAY = 0.99  # [A] ~100 steps of memory: about an epoch of the paper's 8050 images at B = 64
LEARNING_RATE = 1e-3  # [A] Adam
BATCH_SIZE = 64  # [A]
MSE_MODES = ("ema", "batch")
MODULE_KINDS = ("srae", "nn", "sae")  # SRAE and its two baselines (Table 1)


def _shapes(s_z: int, k: int, hidden: int, reconstruction: bool) -> dict[str, Any]:
  """The kernel shapes of one module (v is the (k, 1) kernel of y-bar = v^T E)."""
  shapes = {"encoder": [(s_z, hidden), (hidden, k)], "v": (k, 1)}
  if reconstruction:
    shapes["decoder"] = [(k, hidden), (hidden, s_z)]
  return shapes


def init_module(key: Array, s_z: int, k: int = NUM_FEATURES, hidden: int = HIDDEN,
                reconstruction: bool = True) -> Params:
  """One module's parameters: encoder, v (k,) and, with `reconstruction`, the decoder.

  {"encoder": [dense S_z->h, dense h->k], "v": (k,), "decoder": [dense k->h, dense h->S_z]};
  LeCun-normal kernels, zero biases.
  """
  shapes, tree = jax.tree.flatten(_shapes(s_z, k, hidden, reconstruction),
                                  is_leaf=lambda x: isinstance(x, tuple))
  # One draw for all kernels, then cut: every separate draw adds a threefry to compile (seconds
  # on CPU for a tiny module), and the draws are independent either way.
  flat = jax.random.normal(key, (sum(a * b for a, b in shapes),), jnp.float32)
  offsets = np.cumsum([0] + [a * b for a, b in shapes])
  kernels = [flat[o:o + a * b].reshape(a, b) / np.sqrt(a) for o, (a, b) in zip(offsets, shapes)]
  params = jax.tree.unflatten(
      tree, [{"kernel": w, "bias": jnp.zeros((w.shape[1],), jnp.float32)} for w in kernels])
  params["v"] = params["v"]["kernel"][:, 0]
  return params


def init_modules(key: Array, num_modules: int, s_z: int, k: int = NUM_FEATURES,
                 hidden: int = HIDDEN, reconstruction: bool = True) -> Params:
  """C modules' parameters stacked on a leading axis C (module c from `split(key, C)[c]`)."""
  return _init_modules(key, num_modules, s_z, k, hidden, reconstruction)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _init_modules(key: Array, num_modules: int, s_z: int, k: int, hidden: int,
                  reconstruction: bool) -> Params:
  keys = jax.random.split(key, num_modules)
  return jax.vmap(lambda kk: init_module(kk, s_z, k, hidden, reconstruction))(keys)


def _two_layers(layers: list[dict[str, Array]], x: Array) -> Array:
  """`relu(x W1 + b1) W2 + b2`: both halves of the autoencoder."""
  first, second = layers
  hidden = jax.nn.relu(x @ first["kernel"] + first["bias"])
  return hidden @ second["kernel"] + second["bias"]


def encode_one(params: Params, z: Array) -> Array:
  """One module's x-features E (N, k) of Z (N, S_z)."""
  return _two_layers(params["encoder"], z)


def decode_one(params: Params, e: Array) -> Array:
  """One module's reconstruction Z-hat (N, S_z) of E (N, k)."""
  return _two_layers(params["decoder"], e)


def predict_one(params: Params, z: Array) -> Array:
  """One module's prediction y-bar = v^T E (N,)."""
  return encode_one(params, z) @ params["v"]


def encode(params: Params, z: Array) -> Array:
  """The x-features E (C, N, k) of the C stacked modules."""
  return jax.vmap(encode_one, in_axes=(0, None))(params, z)


def predict(params: Params, z: Array) -> Array:
  """The predictions y-bar (N, C) of the C stacked modules: column c approximates y-hat[:, c]."""
  return jax.vmap(predict_one, in_axes=(0, None), out_axes=1)(params, z)


def f_reg(params: Params, z: Array, y: Array) -> Array:
  """F_reg (C,): the mean absolute error of y-bar against y-hat (N, C) per module (Sec. 3;
  `xjax.metrics.locality.f_reg_errors` per example)."""
  return jnp.mean(f_reg_errors(predict(params, z), jnp.asarray(y, jnp.float32)), axis=0)


def reconstruction_mse(params: Params, z: Array) -> Array:
  """MSE_k (S_z,) of one module over the rows of z."""
  return jnp.mean(jnp.square(decode_one(params, encode_one(params, z)) - z), axis=0)


def srae_loss(params: Params, z: Array, y: Array, ema: Array | None = None, *,
              beta: float = BETA, q: float = Q, mse: str = "ema", decay: float = EMA_DECAY
              ) -> tuple[Array, tuple[dict[str, Array], Array | None]]:
  """Eq. 1 on a batch for ONE module: faithfulness + beta / S_z sum_k log(1 + q MSE_k).

  Args:
    params: one module's parameters (`init_module`); without a decoder (or with beta = 0) the loss
      is the faithfulness term alone (the NN baseline).
    z: activations Z (B, S_z).
    y: the network's outputs y-hat (B,).
    ema: the running average of MSE_k (S_z,), needed for `mse="ema"`.
    beta, q: the weight of the penalty and its sparsity parameter.
    mse: "ema" (MSE_k from the running average, gradient through the batch estimate; see the
      module docstring) or "batch" (the batch estimate, biased inside the log).
    decay: d of the running average.

  Returns:
    (loss, (aux, new_ema)): aux holds "faithfulness", "reconstruction" (beta / S_z sum_k ...)
    and "mse" (the batch's mean MSE_k); new_ema is the updated average in "ema" mode, `ema`
    unchanged otherwise.
  """
  if mse not in MSE_MODES:
    raise ConfigError(f"Unknown SRAE mse mode {mse!r}; known: {', '.join(MSE_MODES)}.")
  e = encode_one(params, z)
  faithfulness = jnp.mean(jnp.square(e @ params["v"] - y))
  zero = jnp.zeros((), faithfulness.dtype)
  if "decoder" not in params or beta == 0:
    return faithfulness, ({"faithfulness": faithfulness, "reconstruction": zero,
                           "mse": zero}, ema)
  batch_mse = jnp.mean(jnp.square(decode_one(params, e) - z), axis=0)  # (S_z,)
  new_ema = ema
  if mse == "ema":
    if ema is None:
      raise ConfigError('srae_loss with mse="ema" needs the running average `ema` (S_z,).')
    new_ema = decay * jax.lax.stop_gradient(ema) + (1.0 - decay) * jax.lax.stop_gradient(batch_mse)
    # Value = the average, gradient = that of the batch estimate (a straight-through sum): the
    # derivative of log(1 + q m) is then q / (1 + q m) times grad MSE_k(batch), at full scale.
    used = new_ema + batch_mse - jax.lax.stop_gradient(batch_mse)
  else:
    used = batch_mse
  reconstruction = beta / z.shape[-1] * jnp.sum(jnp.log1p(q * used))
  aux = {"faithfulness": faithfulness, "reconstruction": reconstruction,
         "mse": jnp.mean(batch_mse)}
  return faithfulness + reconstruction, (aux, new_ema)


def sae_loss(params: Params, z: Array, y: Array | None = None, ema: Array | None = None
             ) -> tuple[Array, tuple[dict[str, Array], Array | None]]:
  """The SAE baseline's loss for ONE module: the mean squared reconstruction error of Z.

  y-hat is not used (v is fitted afterwards, `fit_readout`); the signature matches `srae_loss`.
  """
  del y
  value = jnp.mean(jnp.square(decode_one(params, encode_one(params, z)) - z))
  zero = jnp.zeros((), value.dtype)
  return value, ({"faithfulness": zero, "reconstruction": value, "mse": value}, ema)


def module_loss(method: str = "srae", *, beta: float = BETA, q: float = Q, mse: str = "ema",
                decay: float = EMA_DECAY) -> Callable:
  """The single-module loss `(params, z, y, ema) -> (loss, (aux, new_ema))` of a method."""
  if method not in MODULE_KINDS:
    raise ConfigError(f"Unknown SRAE method {method!r}; known: {', '.join(MODULE_KINDS)}.")
  if mse not in MSE_MODES:
    raise ConfigError(f"Unknown SRAE mse mode {mse!r}; known: {', '.join(MSE_MODES)}.")
  if method == "sae":
    return sae_loss
  beta = 0.0 if method == "nn" else beta
  return lambda params, z, y, ema: srae_loss(params, z, y, ema, beta=beta, q=q, mse=mse,
                                             decay=decay)


def make_train_step(optimizer: optax.GradientTransformation, method: str = "srae", *,
                    beta: float = BETA, q: float = Q, mse: str = "ema",
                    decay: float = EMA_DECAY, donate: bool = False) -> Callable:
  """A jitted step of all C modules: `jax.vmap` of one module's step over the stacked state.

  `donate=True` updates params, opt_state and ema in place (their input arrays are consumed), as
  `train_modules`' scan does; otherwise each step allocates the C modules' buffers anew.

  Returns:
    `step(params, opt_state, ema, z (B, S_z), y (B, C)) -> (params, opt_state, ema, losses (C,))`
    with params, opt_state (`init_optimizer`) and ema (C, S_z) stacked on axis 0; module c
    sees the shared batch z and its own column y[:, c].
  """
  return jax.jit(_modules_step(optimizer, method, beta=beta, q=q, mse=mse, decay=decay),
                 donate_argnums=(0, 1, 2) if donate else ())


def _modules_step(optimizer: optax.GradientTransformation, method: str, **options) -> Callable:
  """`make_train_step` before `jax.jit`, so that `train_modules` can scan it."""
  loss_fn = module_loss(method, **options)

  def one(params, opt_state, ema, z, y):
    (loss, (_, new_ema)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, z, y, ema)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, new_ema, loss

  each = jax.vmap(one, in_axes=(0, 0, 0, 0, 1))

  def step(params, opt_state, ema, z, y):
    # Every module gets its own copy of the shared batch: vmap then makes each layer one batched
    # matrix product of C standard ones. With z unbatched, the first layer (and its weight
    # gradient) contracts z against the stacked (C, S_z, H) kernels, which XLA:CPU computes
    # through a transposed copy of them: 2-3x slower (30 modules of 4096 x 256, batch 64).
    num_modules = y.shape[1]
    return each(params, opt_state, ema, jnp.broadcast_to(z, (num_modules, *z.shape)), y)

  return step


def init_optimizer(optimizer: optax.GradientTransformation, params: Params) -> Any:
  """The optimizer states of the C stacked modules (leading axis C)."""
  return jax.vmap(optimizer.init)(params)


def initial_ema(params: Params, z: Array, batch_size: int = 1024) -> Array:
  """MSE_k (C, S_z) of the stacked modules over all of z, by chunks of `batch_size` rows.

  The running average starts here, at the exact full-data value of the initial parameters; a
  module without a decoder gets zeros (its average is never used).
  """
  num_modules = jax.tree.leaves(params)[0].shape[0]
  if "decoder" not in params:
    return jnp.zeros((num_modules, z.shape[-1]), jnp.float32)
  sums = jax.jit(jax.vmap(
      lambda p, x: jnp.sum(jnp.square(decode_one(p, encode_one(p, x)) - x), axis=0),
      in_axes=(0, None)))
  total = sum(sums(params, z[start:start + batch_size])
              for start in range(0, z.shape[0], batch_size))
  return total / z.shape[0]


def batch_order(key: Array, num_rows: int, batch_size: int, steps: int) -> np.ndarray:
  """(steps, B) row indices: consecutive batches of fresh permutations (one per epoch).

  Deterministic in the key; the last partial batch of an epoch is dropped, so every batch has B
  rows and the step compiles once.
  """
  per_epoch = num_rows // batch_size
  epochs = -(-steps // per_epoch)
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  # numpy's generator seeded by the key's bits: host-side indices without a compiled permutation.
  rng = np.random.default_rng(np.asarray(key, np.uint32).ravel())
  rows = [rng.permutation(num_rows)[:per_epoch * batch_size] for _ in range(epochs)]
  return np.concatenate(rows).reshape(-1, batch_size)[:steps]


def train_modules(z: Array, y: Array, *, key: Array, steps: int | None = None,
                  epochs: int | None = None, batch_size: int = BATCH_SIZE,
                  k: int = NUM_FEATURES, hidden: int = HIDDEN, method: str = "srae",
                  beta: float = BETA, q: float = Q, mse: str = "ema", decay: float = EMA_DECAY,
                  optimizer: optax.GradientTransformation | None = None,
                  params: Params | None = None) -> Params:
  """Trains C modules, one per column of y-hat (N, C), on the same Z (N, S_z).

  Args:
    z, y: the activations and the outputs to explain (y (N,) is one module).
    key: initialises the modules (unless `params` is given) and orders the minibatches.
    steps, epochs: the training length; exactly one of them.
    method: "srae" (Eq. 1), "nn" (faithfulness only, no decoder) or "sae" (the reconstruction
      MSE only; prefer `train_sae`, which also fits v).
    optimizer: default Adam(LEARNING_RATE).
    params: stacked initial parameters (C modules), instead of `init_modules`.

  Returns:
    The trained parameters, stacked on axis C.
  """
  z = jnp.asarray(z, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  y = y[:, None] if y.ndim == 1 else y
  if (steps is None) == (epochs is None):
    raise ConfigError("train_modules needs exactly one of steps and epochs.")
  batch_size = min(batch_size, z.shape[0])
  if epochs is not None:
    steps = epochs * (z.shape[0] // batch_size)
  init_key, order_key = jax.random.split(key)
  if params is None:
    params = init_modules(init_key, y.shape[1], z.shape[1], k, hidden,
                          reconstruction=method != "nn")
  optimizer = optimizer or optax.adam(LEARNING_RATE)
  opt_state = init_optimizer(optimizer, params)
  ema = initial_ema(params, z) if method == "srae" and mse == "ema" else \
      jnp.zeros((y.shape[1], z.shape[1]), jnp.float32)
  step = _modules_step(optimizer, method, beta=beta, q=q, mse=mse, decay=decay)

  @jax.jit
  def run(state, order):  # all steps in one scan: one dispatch, not one per step
    def body(state, rows):
      *state, losses = step(*state, z[rows], y[rows])
      return tuple(state), losses
    return jax.lax.scan(body, state, order)

  (params, _, _), _ = run((params, opt_state, ema),
                          jnp.asarray(batch_order(order_key, z.shape[0], batch_size, steps)))
  return params


def fit_readout(e: Array, y: Array) -> Array:
  """v minimising ||E v - y||^2 (`jnp.linalg.lstsq`); no intercept, as y-bar = v^T E."""
  return jnp.linalg.lstsq(e, y)[0]


def train_sae(z: Array, y: Array, *, key: Array, steps: int | None = None,
              epochs: int | None = None, batch_size: int = BATCH_SIZE, k: int = NUM_FEATURES,
              hidden: int = HIDDEN, optimizer: optax.GradientTransformation | None = None
              ) -> Params:
  """The SAE baseline: one stacked autoencoder of Z, then v per column of y-hat by least squares.

  The autoencoder does not see y-hat, so one serves all C classes; it is copied into C stacked
  modules that differ only in v, so `encode`, `predict` and `f_reg` apply unchanged.
  """
  z = jnp.asarray(z, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  y = y[:, None] if y.ndim == 1 else y
  params = train_modules(z, jnp.zeros((z.shape[0], 1), jnp.float32), key=key, steps=steps,
                         epochs=epochs, batch_size=batch_size, k=k, hidden=hidden, method="sae",
                         optimizer=optimizer)
  single = jax.tree.map(lambda a: a[0], params)
  v = fit_readout(encode_one(single, z), y)  # (k, C)
  stacked = jax.tree.map(lambda a: jnp.broadcast_to(a, (y.shape[1],) + a.shape), single)
  stacked["v"] = v.T
  return stacked
