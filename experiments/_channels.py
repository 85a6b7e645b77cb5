"""Shared pieces of the structured-pruning studies (``rethinking``, ``early_bird``).

Models with batch norm (``vgg*``, ``resnet*``) trained by SGD with momentum, weight decay and a
step schedule (the CIFAR recipe of Liu et al. 2017/2019 and You et al. 2020: the learning rate
divided by 10 at 50% and 75% of the run), several seeds as one vmapped program.

The learning rate is a hyperparameter held in the optimizer state (``optax.inject_hyperparams``),
set before each constant-rate *phase* of a run. So one compiled training program serves every
phase and every arm (fine-tune, Scratch-E, Scratch-B) of an architecture; only a new
architecture (another set of kept widths) compiles anew.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from jaxprune import data, masks, metrics, models, structured, train

MILESTONES = (0.5, 0.75)
"""Fractions of a run at which the learning rate is divided by 10 (Liu et al.; You et al.)."""


class Phase(NamedTuple):
    """``iterations`` steps at learning rate ``lr``."""

    iterations: int
    lr: float


class Nets(NamedTuple):
    """Models of one architecture, one per seed, and their stacked pure forms."""

    modules: list[Any]  # nnx modules, one per ticket (structure for compaction)
    apply_fn: Any  # stateful apply_fn(params, model_state, x, *, train)
    params: Any  # stacked over tickets
    model_state: Any  # stacked over tickets


def schedule(iterations: int, lr: float, eval_every: int) -> list[Phase]:
    """The step schedule as constant phases: ``lr``, then ÷10 at each of :data:`MILESTONES`.

    Boundaries are rounded to a multiple of ``eval_every`` (so every phase reuses the compiled
    evaluation chunk); phases that round to zero steps are dropped.

    Example:
      >>> schedule(800, 0.1, 100)
      [Phase(iterations=400, lr=0.1), Phase(iterations=200, lr=0.01), Phase(iterations=200, lr=0.001)]
    """
    cuts = [0]
    for m in MILESTONES:
        cuts.append(min(iterations, max(cuts[-1], round(m * iterations / eval_every) * eval_every)))
    cuts.append(iterations)
    return [Phase(b - a, lr / 10**i) for i, (a, b) in enumerate(itertools.pairwise(cuts)) if b > a]


def optimizer(
    momentum: float, weight_decay: float, penalty: float = 0.0
) -> optax.GradientTransformation:
    """SGD with momentum and weight decay (and Network Slimming's penalty on BN scales when
    ``penalty > 0``); the learning rate lives in the state, set per phase by :func:`set_lr`."""

    def make(learning_rate: Any) -> optax.GradientTransformation:
        parts = [
            optax.add_decayed_weights(weight_decay),
            optax.sgd(learning_rate, momentum=momentum),
        ]
        if penalty > 0:
            parts.insert(0, structured.slimming_penalty(penalty))
        return optax.chain(*parts)

    return optax.inject_hyperparams(make)(learning_rate=0.0)


def set_lr(state: train.TrainState, lr: float) -> train.TrainState:
    """The same state with every ticket's learning rate set to ``lr``."""
    n = int(jax.tree.leaves(state.params)[0].shape[0])
    # A committed float32 array (not a weakly typed one): every phase then hits the same
    # compiled training program.
    rate = jax.device_put(np.full((n,), lr, np.float32), jax.devices()[0])
    opt_state = optax.tree_utils.tree_set(state.opt_state, learning_rate=rate)
    return state._replace(opt_state=jax.device_put(opt_state, jax.devices()[0]))


@functools.cache
def _optimizer_for(
    momentum: float, weight_decay: float, penalty: float
) -> optax.GradientTransformation:
    # One optax object per setting: optax transformations are closures, equal only to themselves,
    # and steps are equal (and share compiled programs) when built from the same optimizer object.
    return optimizer(momentum, weight_decay, penalty)


def steps(apply_fn: Any, momentum: float, weight_decay: float, penalty: float = 0.0) -> train.Steps:
    """Stateful steps for ``apply_fn``: equal for equal settings, so compiled programs are reused."""
    return train.make_steps(
        apply_fn, _optimizer_for(momentum, weight_decay, penalty), stateful=True
    )


def build(
    model: str, ds: data.Dataset, seeds: Sequence[int], *, width: float, conv_grad: str = "auto"
) -> Nets:
    """One model per seed, stacked."""
    modules = [
        models.build(
            model,
            input_shape=ds.input_shape,
            num_classes=ds.num_classes,
            seed=s,
            width=width,
            conv_grad=conv_grad,
        )
        for s in seeds
    ]
    return stack(modules)


def stack(modules: Sequence[Any]) -> Nets:
    """The pure forms of models of one architecture, params and model state stacked."""
    forms = [models.stateful(m) for m in modules]
    return Nets(
        list(modules),
        forms[0][0],
        train.stack([f[1] for f in forms]),
        train.stack([f[2] for f in forms]),
    )


def fit(
    s: train.Steps,
    state: train.TrainState,
    ds: data.Dataset,
    phases: Sequence[Phase],
    *,
    batch_size: int,
    eval_every: int,
    data_key: Any,
    progress: bool,
    desc: str,
    on_eval: Callable[[train.TrainState, int], None] | None = None,
) -> tuple[train.TrainState, train.History]:
    """Train stacked tickets through ``phases``; the histories joined as one (early stop over all).

    ``on_eval(state, iteration)`` is called at every evaluation when given (then each
    evaluation interval is its own fit call, still one compiled chunk).
    """
    n = int(jax.tree.leaves(state.params)[0].shape[0])
    mesh = train.mesh_for(n)
    ones = jax.vmap(masks.ones)(state.params)
    parts: list[tuple[int, train.History]] = []
    done = 0
    for i, phase in enumerate(phases):
        state = set_lr(state, phase.lr)
        pieces = [phase.iterations] if on_eval is None else _pieces(phase.iterations, eval_every)
        for j, length in enumerate(pieces):
            state, hist = train.fit(
                s, state, ones, ds.train, ds.val, ds.test, iterations=length,
                batch_size=batch_size, eval_every=min(eval_every, length),
                data_key=jax.random.fold_in(data_key, 1000 * i + j), tickets=True, mesh=mesh,
                progress=progress, desc=desc,
            )  # fmt: skip
            state = jax.device_put(state, jax.devices()[0])
            parts.append((done, hist))
            done += length
            if on_eval is not None:
                on_eval(state, done)
    return state, join(parts)


def _pieces(iterations: int, every: int) -> list[int]:
    return [every] * (iterations // every) + [iterations % every] * (iterations % every > 0)


def join(parts: Sequence[tuple[int, train.History]]) -> train.History:
    """Histories of consecutive fits (each with its iteration offset) as one; early stop = the
    evaluation of least validation loss over all of them."""
    it = np.concatenate([off + h.iteration for off, h in parts])
    cols = {
        f: np.concatenate([getattr(h, f) for _, h in parts], axis=-1)
        for f in ("train_loss", "val_loss", "val_acc", "test_loss", "test_acc")
    }
    best = np.argmin(cols["val_loss"], axis=-1)
    return train.History(
        iteration=it,
        early_stop_iteration=it[best],
        early_stop_test_acc=np.take_along_axis(cols["test_acc"], best[..., None], axis=-1)[..., 0],
        **cols,
    )


def init_state(s: train.Steps, nets: Nets) -> train.TrainState:
    """Stacked fresh train states, placed on the first device like the states fits return."""
    state = jax.jit(jax.vmap(s.init))(nets.params, nets.model_state)
    return jax.device_put(state, jax.devices()[0])


def test_accuracy(s: train.Steps, state: train.TrainState, ds: data.Dataset) -> np.ndarray:
    """Per ticket test accuracy in evaluation mode (running statistics)."""
    ones = jax.vmap(masks.ones)(state.params)
    xs, ys = ds.test
    acc = train.evaluate(
        s, state.params, ones, None, xs, ys, tickets=True, model_state=state.model_state
    )[1]
    return np.asarray(acc)


def flops(nets_or_module: Any, input_shape: tuple[int, ...]) -> float:
    """FLOPs per example of one model in evaluation mode (:mod:`jaxprune.metrics`)."""
    apply_fn, params, model_state = models.stateful(nets_or_module)
    counts = metrics.layer_flops(
        lambda p, x: apply_fn(p, model_state, x, train=False)[0], params, input_shape
    )
    return float(sum(float(v) for v in counts.values()))


def ticket(tree: Any, i: int) -> Any:
    """Ticket ``i`` of a stacked tree."""
    return jax.tree.map(lambda a: a[i], tree)


def arch_key(keep: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    """The kept width of every group: tickets with equal keys share an architecture."""
    return tuple(sorted((n, int(np.sum(np.asarray(v)))) for n, v in keep.items()))
