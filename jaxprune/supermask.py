r"""Learned supermasks (Zhou et al. 2019): train a mask, never the weights.

The weights :math:`w` stay frozen at their initial values. Every weight of a prunable leaf
:math:`\ell` (a kernel, by the default rule of :mod:`jaxprune.masks`) gets one real logit
:math:`s` (the trained parameter, :func:`logits_init`: 0 unless told otherwise). A training step

1. samples :math:`b \sim \mathrm{Bernoulli}(\sigma(s))` per weight and ANDs it with an outer mask
   :math:`M` (all-True for a plain supermask; a pruned network's mask to learn a supermask inside
   it), see :func:`sample`;
2. uses the straight-through mask
   :math:`m = M \odot \big(b + \sigma(s) - \mathrm{sg}(\sigma(s))\big)`: the forward pass sees the
   sample exactly, the backward pass the gradient of :math:`\sigma(s)`, so
   :math:`\partial L / \partial s = M \odot \partial L / \partial m \cdot \sigma(s)(1 - \sigma(s))`;
3. runs the network on the effective weights (:func:`effective_weights`)

   .. math:: \tilde w_\ell = w_\ell \odot m_\ell \cdot c_\ell, \qquad
      c_\ell = \begin{cases} n_\ell / \max(k_\ell, 1) & \text{with dynamic weight rescaling} \\
      1 & \text{otherwise} \end{cases}

   where :math:`n_\ell` is the leaf's size and :math:`k_\ell` the number of weights the current
   mask keeps in it (the rescaling factor is a constant to the gradient; :math:`\max(k, 1)` only
   guards the empty layer, whose weights are all 0 anyway, as in ``reset``'s ``*_rescaled``);
4. updates the logits of prunable leaves where :math:`M` holds, and nothing else. Other leaves
   (biases, norms) are used as they are in the frozen tree; their logits exist only so that the
   logits mirror the weights' tree, and never move.

Evaluation is deterministic: :math:`m = (\sigma(s) > 0.5) \wedge M` (:func:`mask_of`), the most
likely mask under the learned Bernoulli distribution — a single fixed mask whose density can be
reported, rather than an average over samples. With logits initialised to 0, :math:`\sigma(s) = 0.5`
and this mask is empty until training moves the logits.

Randomness lives in the state: ``init(logits, key=k)`` stores ``k`` next to the optax state, and
step ``t`` samples with ``fold_in(k, t)`` (:func:`sample`), so stacked per-ticket keys vmap and a
resumed run draws the same masks. The steps follow the :class:`~jaxprune.train.Steps` protocol and
plug into :func:`jaxprune.train.fit` unchanged: pass the weights as ``frozen``.

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> from jaxprune import masks, supermask
  >>> weights = {"w": jax.random.normal(jax.random.key(0), (3, 2)), "b": jnp.zeros(2)}
  >>> def apply_fn(p, x):
  ...     return x @ p["w"] + p["b"][None]
  >>> steps = supermask.make_steps(apply_fn, optax.sgd(100.0, momentum=0.9), rescale=True)
  >>> state = steps.init(supermask.logits_init(weights), key=jax.random.key(1))
  >>> mask = masks.ones(weights)
  >>> batch = (jnp.ones((4, 3)), jnp.array([0, 1, 0, 1]))
  >>> state, metrics = steps.train_step(state, mask, batch, weights)
  >>> sorted(steps.eval_step(state.params, mask, batch, weights))
  ['correct', 'loss']
  >>> bool(jnp.all(state.params["b"] == 0))  # the bias logits never move
  True
  >>> learned = supermask.mask_of(state.params)
  >>> float(masks.density(masks.prunable_leaves(learned))) <= 1.0
  True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import _checks, masks
from jaxprune._types import Array, ArrayLike, Key, Mask, Params, Prunable, PyTree
from jaxprune.train import step

__all__ = [
    "SupermaskOptState",
    "SupermaskSteps",
    "effective_weights",
    "logits_init",
    "make_steps",
    "mask_of",
    "sample",
]

ApplyFn = Callable[[Params, Array], Array]
LossFn = Callable[[Array, Array], Array]


class SupermaskOptState(NamedTuple):
    """The ``opt_state`` of a supermask :class:`~jaxprune.train.TrainState`.

    ``inner`` is the optax state of the logits; ``key`` the ticket's sampling key (step ``t``
    samples with ``fold_in(key, t)``), carried here so that it stacks and vmaps with the ticket.
    """

    inner: optax.OptState
    key: Key


def logits_init(weights: Params, value: ArrayLike = 0.0) -> Params:
    r"""One float32 logit per weight, all equal to ``value`` (:math:`\sigma(0) = 0.5`).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import supermask
      >>> supermask.logits_init({"w": jnp.ones((2, 2))}, 1.5)["w"]
      Array([[1.5, 1.5],
             [1.5, 1.5]], dtype=float32)
    """
    return jax.tree.map(lambda w: jnp.full(jnp.shape(w), value, jnp.float32), weights)


def _flags(tree: PyTree, prunable: Prunable) -> list[bool]:
    return list(jax.tree.leaves(masks.is_prunable(tree, prunable)))


def _outer(mask: Mask | None, logits: Params) -> list[Array]:
    if mask is None:
        return [jnp.ones(jnp.shape(s), bool) for s in jax.tree.leaves(logits)]
    _checks.check_mask(mask, logits)
    return list(jax.tree.leaves(mask))


def sample(
    logits: Params, key: Key, *, mask: Mask | None = None, prunable: Prunable = None
) -> Mask:
    r"""A random mask: :math:`b \sim \mathrm{Bernoulli}(\sigma(s))` AND ``mask`` on prunable leaves.

    One draw :math:`u \sim U[0, 1)^N` from ``key``, :math:`N` the total size of the prunable
    leaves, is split over them in leaf order, and :math:`b = u < \sigma(s)`; non-prunable leaves
    get ``mask`` (all-True when ``mask`` is ``None``). (One draw rather than one per leaf: each
    random-number call is a separate threefry program that XLA compiles, several seconds on a CPU.)

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import supermask
      >>> logits = {"w": jnp.array([[-30.0, 30.0]]), "b": jnp.zeros(2)}
      >>> m = supermask.sample(logits, jax.random.key(0))
      >>> m["w"].tolist(), m["b"].tolist()
      ([[False, True]], [True, True])
    """
    leaves, treedef = jax.tree.flatten(logits)
    outer = _outer(mask, logits)
    flags = _flags(logits, prunable)
    total = sum(int(np.size(s)) for s, flag in zip(leaves, flags, strict=True) if flag)
    u = jax.random.uniform(key, (total,))
    out, start = [], 0
    for s, m, flag in zip(leaves, outer, flags, strict=True):
        if flag:
            n = int(np.size(s))
            drawn = u[start : start + n].reshape(jnp.shape(s)) < jax.nn.sigmoid(s)
            out.append(drawn & m)
            start += n
        else:
            out.append(m)
    return jax.tree.unflatten(treedef, out)


def mask_of(logits: Params, mask: Mask | None = None, prunable: Prunable = None) -> Mask:
    r"""The deterministic mask used at evaluation: :math:`(\sigma(s) > 0.5) \wedge M`.

    Non-prunable leaves get ``mask`` (all-True when ``mask`` is ``None``). Report its density with
    ``masks.density(masks.prunable_leaves(mask_of(logits)))``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import supermask
      >>> supermask.mask_of({"w": jnp.array([[-1.0, 0.0, 2.0]])})["w"].tolist()
      [[False, False, True]]
    """
    leaves, treedef = jax.tree.flatten(logits)
    outer = _outer(mask, logits)
    out = [
        (jax.nn.sigmoid(s) > 0.5) & m if flag else m
        for s, m, flag in zip(leaves, outer, _flags(logits, prunable), strict=True)
    ]
    return jax.tree.unflatten(treedef, out)


def effective_weights(
    weights: Params, m: PyTree, *, rescale: bool = False, prunable: Prunable = None
) -> Params:
    r"""The weights the forward pass uses: :math:`w \odot m \cdot c_\ell` per leaf.

    Args:
      weights: the frozen weights.
      m: a mask with ``weights``' structure: bool, or float (e.g. a straight-through mask).
      rescale: dynamic weight rescaling: prunable leaves are multiplied by
        :math:`c_\ell = n_\ell / \max(k_\ell, 1)`, :math:`n_\ell` the leaf's size and :math:`k_\ell`
        its number of non-zero mask entries (a constant to the gradient). Non-prunable leaves
        are never rescaled (their mask is all-True by convention, so they are used as they are).
      prunable: a :data:`~jaxprune._types.Prunable` spec (default: ``ndim >= 2``).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import supermask
      >>> w = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
      >>> m = {"w": jnp.array([[True, False], [False, False]])}
      >>> supermask.effective_weights(w, m, rescale=True)["w"]
      Array([[4., 0.],
             [0., 0.]], dtype=float32)
    """
    _checks.check_like(m, weights, name="m", ref_name="weights")
    leaves, treedef = jax.tree.flatten(weights)
    out = []
    for w, mm, flag in zip(leaves, jax.tree.leaves(m), _flags(weights, prunable), strict=True):
        w = jnp.asarray(w)
        eff = w * jnp.asarray(mm).astype(w.dtype)
        if rescale and flag:
            kept = jnp.sum(jax.lax.stop_gradient(mm) != 0)
            factor = np.size(w) / jnp.maximum(kept, 1).astype(jnp.float32)
            eff = eff * factor.astype(w.dtype)
        out.append(eff)
    return jax.tree.unflatten(treedef, out)


def _straight_through(logits: Params, drawn: Mask, outer: Mask, flags: PyTree) -> PyTree:
    """:math:`M(b + σ(s) − sg(σ(s)))` on prunable leaves (forward value exactly ``b``), else M."""

    def one(s: Array, b: Array, m: Array, flag: bool) -> Array:
        if not flag:
            return m.astype(s.dtype)
        p = jax.nn.sigmoid(s)
        # b + (p - sg(p)), not (b + p) - sg(p): the bracket is exactly 0, so the forward value is b.
        return m.astype(s.dtype) * (b.astype(s.dtype) + (p - jax.lax.stop_gradient(p)))

    return jax.tree.map(one, logits, drawn, outer, flags)


def _check_step_args(logits: Params, mask: Mask, frozen: PyTree | None) -> None:
    if frozen is None:
        raise ValueError(
            "frozen is required by the supermask steps: it is the tree of frozen weights the "
            "masks are learned for (e.g. fit(..., frozen=weights)); got None."
        )
    _checks.check_like(frozen, logits, name="frozen", ref_name="logits (state.params)")
    _checks.check_mask(mask, logits)


def _where(keep: PyTree, tree: PyTree) -> PyTree:
    return jax.tree.map(lambda k, t: jnp.where(k, t, jnp.zeros_like(t)), keep, tree)


def make_steps(
    apply_fn: ApplyFn,
    optimizer: optax.GradientTransformation,
    *,
    rescale: bool = False,
    prunable: Prunable = None,
    loss_fn: LossFn = step.cross_entropy,
) -> SupermaskSteps:
    r"""Learned-supermask steps for :func:`jaxprune.train.fit`.

    Args:
      apply_fn: pure ``apply_fn(weights, x) -> logits`` (e.g. from
        :func:`jaxprune.models.functional`).
      optimizer: optax transformation of the mask logits (the paper: SGD lr 100, momentum 0.9).
      rescale: dynamic weight rescaling (see :func:`effective_weights`), in training and eval.
      prunable: which leaves get a learned mask (a :data:`~jaxprune._types.Prunable` spec of
        hashable values: regexes, a rule, or a pytree of Python bools).
      loss_fn: training loss ``loss_fn(logits, labels) -> scalar``; default cross-entropy.

    Returns:
      :class:`SupermaskSteps`, following the :class:`~jaxprune.train.Steps` protocol:

      * ``init(logits, *, key)``: a :class:`~jaxprune.train.TrainState` whose ``params`` are the
        logits and whose ``opt_state`` is a :class:`SupermaskOptState` holding ``key`` (required);
      * ``train_step(state, mask, batch, frozen)``: one step on a sampled mask (module
        docstring); ``frozen`` (the weights) is required; returns ``(state, {"loss": ...})``;
      * ``eval_step(params, mask, batch, frozen, valid=None)``: the deterministic mask
        :func:`mask_of`, the same rescaling; summed softmax cross-entropy ``loss`` and
        ``correct`` over the rows where ``valid``, like :func:`jaxprune.train.make_steps`.

      The steps are not stateful (``model_state`` must be ``None`` or empty). Two calls with the
      same ``apply_fn`` and optimizer object and equal options give equal steps, which share
      compiled programs.

    Example:
      >>> import optax
      >>> from jaxprune import supermask
      >>> def apply_fn(p, x):
      ...     return x @ p["w"]
      >>> opt = optax.sgd(100.0, momentum=0.9)
      >>> supermask.make_steps(apply_fn, opt, prunable=["w"]) == supermask.make_steps(
      ...     apply_fn, opt, prunable=["w"])
      True
    """
    return SupermaskSteps(apply_fn, optimizer, rescale, prunable, loss_fn)


def _spec_key(prunable: Prunable) -> Any:
    """A hashable stand-in for a ``prunable`` spec (lists and dicts are not hashable), equal
    exactly when the specs are equal."""
    leaves, treedef = jax.tree.flatten(prunable)
    for i, leaf in enumerate(leaves):  # regexes, a rule, Python bools
        step.check_hashable(leaf, name=f"prunable's leaf {i}")
    return treedef, tuple(leaves)


@dataclasses.dataclass(frozen=True)
class SupermaskSteps:
    """The :class:`~jaxprune.train.Steps` of :func:`make_steps`: a mask learned over frozen weights.

    A frozen dataclass of what it is built from (see :func:`make_steps` for the fields): equal,
    with equal hashes, when built from the same ``apply_fn``, optimizer object and options.
    """

    apply_fn: ApplyFn
    optimizer: optax.GradientTransformation
    rescale: bool = False
    prunable: Prunable = dataclasses.field(default=None, compare=False)
    loss_fn: LossFn = step.cross_entropy
    # ``prunable`` may be a list or dict: it is compared and hashed through this stand-in.
    _prunable_key: Any = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("apply_fn", "optimizer", "loss_fn"):
            step.check_hashable(getattr(self, name), name=name)
        object.__setattr__(self, "_prunable_key", _spec_key(self.prunable))

    @property
    def stateful(self) -> bool:
        """``False``: the frozen network has no running statistics."""
        return False

    def init(
        self, params: Params, model_state: PyTree | None = None, *, key: Key | None = None
    ) -> step.TrainState:
        """The state at step 0: ``params`` are the logits, ``key`` (required) the sampling key."""
        step.check_model_state(False, model_state, name="model_state")
        for path, s in _checks.leaves_with_paths(params):
            if not jnp.issubdtype(jnp.result_type(s), jnp.floating):
                raise ValueError(
                    f"logits{path} must be floating point, got {jnp.result_type(s)}; build the "
                    "logits with supermask.logits_init(weights)."
                )
        if not (
            isinstance(key, jax.Array)
            and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            and key.shape == ()
        ):
            raise ValueError(
                f"key must be one typed PRNG key (jax.random.key(seed)), got {key!r}: the "
                "supermask steps sample a mask every step; for tickets, init each ticket with "
                "its own key and stack the states."
            )
        opt_state = SupermaskOptState(self.optimizer.init(params), key)
        return step.TrainState(params, opt_state, jnp.zeros((), jnp.int32))

    def train_step(
        self,
        state: step.TrainState,
        mask: Mask,
        batch: step.Batch,
        frozen: PyTree | None = None,
    ) -> tuple[step.TrainState, dict[str, Array]]:
        """One step on a mask sampled with ``fold_in(key, step)`` (module docstring)."""
        _check_step_args(state.params, mask, frozen)
        flags = masks.is_prunable(state.params, self.prunable)
        key = jax.random.fold_in(state.opt_state.key, state.step)
        drawn = sample(state.params, key, mask=mask, prunable=flags)
        x, y = batch

        def loss_of(logits: Params) -> Array:
            m = _straight_through(logits, drawn, mask, flags)
            eff = effective_weights(frozen, m, rescale=self.rescale, prunable=flags)
            return self.loss_fn(self.apply_fn(eff, x), y)

        loss, grads = jax.value_and_grad(loss_of)(state.params)
        # Only the logits of kept positions of prunable leaves move (whatever the optimizer does).
        trainable = jax.tree.map(lambda f, m: m if f else jnp.zeros_like(m), flags, mask)
        updates, inner = self.optimizer.update(
            _where(trainable, grads), state.opt_state.inner, state.params
        )
        logits = optax.apply_updates(state.params, _where(trainable, updates))
        new = step.TrainState(logits, SupermaskOptState(inner, state.opt_state.key), state.step + 1)
        return new, {"loss": loss}

    def eval_step(
        self,
        params: Params,
        mask: Mask,
        batch: step.Batch,
        frozen: PyTree | None = None,
        valid: Array | None = None,
        *,
        model_state: PyTree | None = None,
    ) -> dict[str, Array]:
        """Summed ``loss`` and ``correct`` of the deterministic mask :func:`mask_of`."""
        step.check_model_state(False, model_state, name="model_state")
        _check_step_args(params, mask, frozen)
        flags = masks.is_prunable(params, self.prunable)
        x, y = batch
        m = mask_of(params, mask, flags)
        eff = effective_weights(frozen, m, rescale=self.rescale, prunable=flags)
        return step.summed_eval(self.apply_fn(eff, x), y, valid)

    def eval_params(self, state: step.TrainState) -> Params:
        """What :func:`jaxprune.train.fit` evaluates: the logits ``state.params``."""
        return state.params
