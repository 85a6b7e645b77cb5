r"""The resumable level driver: iterative pruning of a whole ticket table, level by level.

:func:`run_levels` is the loop every level-by-level study runs (lottery tickets, Deconstructing
Lottery Tickets, OBD's prune-and-retrain) and the one a researcher's own sweep runs:

* **level 0** trains one dense network per seed (``theta0`` holds one rewind point per seed) for
  ``dense_iterations`` steps, keeping :math:`\theta_k` after ``rewind_iteration`` = k steps (late
  rewinding; :math:`\theta_0` when k = 0); every ticket of a seed shares its dense run;
* **level ℓ ≥ 1**: one :func:`jaxprune.tickets.next_level` round over all tickets (score, select,
  source mask, reset from :math:`\theta_k`), the untrained network evaluated on the test split
  (``untrained_acc``; with ``supermask_acc=True`` also the same mask on signed-constant weights,
  Zhou et al.'s supermask), then every ticket trained ``iterations`` steps in one vmapped,
  scanned program (:func:`jaxprune.train.fit`), the ticket axis sharded over the host devices.

Models with batch norm (:func:`jaxprune.models.stateful`) pass their running statistics as
``model_state``: the dense run keeps them at k with θ_k, and every level starts each ticket from
its seed's θ_k *and* its seed's statistics at k (open_lth rewinds the whole state dict).

After each level the masks and trained weights are checkpointed (orbax, ``state/level_LLL``) and
the level's rows are committed to the run's :class:`jaxprune.results.Store` in one atomic unit,
so a killed run started again with the same arguments resumes at the first unfinished level and
never duplicates or drops a row. A finished run started again restores nothing. A level whose
rows are damaged (the store moves them aside) or whose checkpoint is unreadable when a later
level needs it is recomputed from the level before it — the documented repair rule, announced by
a :class:`jaxprune.results.DamagedUnitWarning` naming the file. One compiled program serves every level; the number of programs
does not grow with the criteria, resets or pruned values in the table.

Rows: one per ticket and level, with the ticket's ``ticket``, ``seed``, ``criterion``, ``kept``,
``pruned`` and ``source``, the caller's ``columns``, and ``level``, ``density`` (of the prunable
weights), ``final_test_acc``, ``final_val_acc``, ``final_test_loss``, ``final_val_loss``, ``early_stop_iteration`` and
``early_stop_test_acc`` (the evaluation of least validation loss, counted from initialisation),
``first_eval_iteration`` / ``first_eval_test_acc`` (differences between tickets show most early in
training), ``untrained_acc`` (and ``supermask_acc``) and ``iterations``.

Example — a sweep of one's own in a few lines (docs/sweeps.md has a longer one):
  >>> import tempfile, jax, optax
  >>> from jaxprune import data, models, sweep, tickets, train
  >>> ds = data.load("digits")
  >>> nets = [models.functional(models.build("mlp", input_shape=ds.input_shape,
  ...         num_classes=10, seed=s, hidden=(16,))) for s in range(2)]
  >>> table = tickets.grid(2, ("large_final", "random"), key=jax.random.key(0))
  >>> out = sweep.run_levels(tempfile.mkdtemp(), table, nets[0][0],
  ...     train.stack([n[1] for n in nets]), ds, optimizer=optax.adam(1e-2), levels=2,
  ...     rates=0.5, iterations=40, batch_size=64, eval_every=20, key=jax.random.key(1),
  ...     progress=False)
  >>> len(out.rows), sorted({r["level"] for r in out.rows})
  (12, [0, 1, 2])
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxprune import _checks, masks, reset, results, tickets
from jaxprune import data as data_
from jaxprune import train as train_
from jaxprune._types import Key, Params, Prunable, PyTree

__all__ = ["Sweep", "history_columns", "load_level", "prunable_density", "run_levels"]


class Sweep(NamedTuple):
    """What :func:`run_levels` returns.

    ``timings`` (of this invocation, in seconds): ``total``, ``compile`` (tracing, lowering and
    XLA compiling), ``train`` (the training runs, their compiles excluded), ``other``;
    ``programs``: the number of XLA programs compiled; ``ticket_steps``: training steps summed
    over tickets (``ticket_steps / train`` is the engine's throughput in this run).
    """

    path: Path
    rows: list[results.Row]
    timings: dict[str, float]


def prunable_density(mask: PyTree, prunable: Prunable = None) -> np.ndarray:
    """Density of the prunable leaves of stacked masks, per ticket: ``ndim ≥ 2`` per ticket, or
    those of a :data:`~jaxprune._types.Prunable` spec.

    Example:
      >>> import numpy as np
      >>> from jaxprune import sweep
      >>> m = {"w": np.array([[[True, False]], [[True, True]]]), "b": np.ones((2, 2), bool)}
      >>> sweep.prunable_density(m).tolist()
      [0.5, 1.0]
    """
    one = jax.tree.map(lambda m: m[0], mask)
    flags = jax.tree.leaves(masks.is_prunable(one, prunable))
    leaves = [np.asarray(m) for m, f in zip(jax.tree.leaves(mask), flags, strict=True) if f]
    if not leaves:
        return np.ones(jax.tree.leaves(mask)[0].shape[0])
    kept = sum(m.reshape(m.shape[0], -1).sum(1) for m in leaves)
    total = sum(int(np.prod(m.shape[1:])) for m in leaves)
    return np.asarray(kept, np.float64) / total


def history_columns(hist: train_.History, i: int, offset: int = 0) -> dict[str, Any]:
    """Row columns of ticket ``i``'s :class:`~jaxprune.train.History` (iterations + ``offset``):
    final and early-stop accuracies, the final losses (mean cross-entropy per example; per token
    for a language model, so that ``exp(final_test_loss)`` is its test perplexity), and the first
    evaluation (where tickets differ most)."""
    return {
        "final_test_acc": float(hist.test_acc[i, -1]),
        "final_val_acc": float(hist.val_acc[i, -1]),
        "final_test_loss": float(hist.test_loss[i, -1]),
        "final_val_loss": float(hist.val_loss[i, -1]),
        "early_stop_iteration": int(hist.early_stop_iteration[i]) + offset,
        "early_stop_test_acc": float(hist.early_stop_test_acc[i]),
        "first_eval_iteration": int(hist.iteration[0]) + offset,
        "first_eval_test_acc": float(hist.test_acc[i, 0]),
    }


@jax.jit
def _signed_constant(w_init: Params, mask: PyTree) -> Params:
    return jax.vmap(lambda w, m: reset.reset(w, m, kept="signed_constant")[0])(w_init, mask)


@jax.jit
def _ones(params: Params) -> PyTree:
    return jax.vmap(masks.ones)(params)


@functools.partial(jax.jit, static_argnames="steps")
def _init_states(
    steps: train_.Steps, params: Params, model_state: PyTree | None = None
) -> train_.TrainState:
    # One program for the stacked init (eagerly, every optimizer leaf would compile its own).
    return jax.vmap(steps.init)(params, model_state)


class _Clock:
    """Wall time of training runs, net of the compiles they triggered."""

    def __init__(self, compiles: train_.CompileCount) -> None:
        self.compiles = compiles
        self.train = 0.0
        self.ticket_steps = 0

    def fit(self, *args: Any, **kwargs: Any) -> tuple[train_.TrainState, train_.History]:
        t0, c0 = time.perf_counter(), self.compiles.seconds
        out = train_.fit(*args, **kwargs)
        self.train += time.perf_counter() - t0 - (self.compiles.seconds - c0)
        self.ticket_steps += int(jax.tree.leaves(args[2])[0].shape[0]) * kwargs["iterations"]
        return out


def _grads_at(
    apply_fn: Any, w_init: Params, x: jax.Array, y: jax.Array, model_state: PyTree | None
) -> Params:
    if model_state is None:

        def loss(p: Params, s: PyTree) -> jax.Array:
            return train_.cross_entropy(apply_fn(p, x), y)

    else:  # batch norm as a training step sees it: batch statistics

        def loss(p: Params, s: PyTree) -> jax.Array:
            return train_.cross_entropy(apply_fn(p, s, x, train=True)[0], y)

    return jax.jit(jax.vmap(jax.grad(loss)))(w_init, model_state)


def _describe(
    table: tickets.Table, rates: Any, settings: Mapping[str, Any], extra: Mapping[str, Any] | None
) -> dict[str, Any]:
    host = table.tickets()
    if len(jax.tree.leaves(rates)) == 1:
        rate: Any = np.asarray(jax.tree.leaves(rates)[0]).tolist()
    else:
        rate = {p: np.asarray(r).tolist() for p, r in _checks.leaves_with_paths(rates)}
    return {
        "tickets": [list(t) for t in host],
        "rates": rate,
        **settings,
        **(dict(extra) if extra else {}),
    }


def _clear_state(folder: Path, level: int) -> None:
    for stale in folder.glob(f"level_{level:03d}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _check_settings(
    table: tickets.Table, theta0: Params, dataset: data_.Dataset, levels: int, iterations: int,
    dense_iterations: int, rewind_iteration: int, batch_size: int, eval_every: int,
) -> int:  # fmt: skip
    for name, value, low in (
        ("levels", levels, 0), ("iterations", iterations, 1),
        ("dense_iterations", dense_iterations, 1), ("rewind_iteration", rewind_iteration, 0),
        ("batch_size", batch_size, 1), ("eval_every", eval_every, 1),
    ):  # fmt: skip
        if not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}.")
    if rewind_iteration >= dense_iterations:
        raise ValueError(
            f"rewind_iteration must be below dense_iterations ({dense_iterations}), got "
            f"{rewind_iteration}."
        )
    n_train = len(dataset.train.y)
    if batch_size > n_train:
        raise ValueError(
            f"batch_size must be at most the {n_train} training examples of "
            f"{dataset.name!r}, got {batch_size}."
        )
    n_seeds = int(np.shape(jax.tree.leaves(theta0)[0])[0])
    top = int(np.max(np.asarray(table.seed)))
    if top >= n_seeds:
        raise ValueError(
            f"theta0 must hold a rewind point for every seed of the table (leading axis > {top}), "
            f"got {n_seeds}."
        )
    return n_seeds


def run_levels(
    store: results.Store | str | os.PathLike[str],
    table: tickets.Table,
    apply_fn: Any,
    theta0: Params,
    dataset: data_.Dataset,
    *,
    optimizer: optax.GradientTransformation,
    levels: int,
    rates: Any,
    iterations: int,
    batch_size: int,
    eval_every: int,
    key: Key,
    dense_iterations: int | None = None,
    rewind_iteration: int = 0,
    scope: str = "layerwise",
    min_keep: int = 0,
    scorers: Mapping[str, tickets.Scorer] | None = None,
    grads_examples: int = 1000,
    supermask_acc: bool = False,
    columns: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    config: Mapping[str, Any] | None = None,
    progress: bool = True,
    desc: str = "levels",
    model_state: PyTree | None = None,
    augment: data_.Augment | None = None,
    level_optimizer: optax.GradientTransformation | None = None,
    prunable: Prunable = None,
    compute_dtype: Any = None,
) -> Sweep:
    """Prune and train every ticket of ``table`` for ``levels`` levels (module docs); resumable.

    Args:
      store: the run's :class:`~jaxprune.results.Store`, or a folder for one (its config is
        then the table, rates and these settings plus ``config``: a folder never mixes runs).
      table: the tickets (:func:`jaxprune.tickets.table` / :func:`~jaxprune.tickets.grid`).
      apply_fn: pure ``apply_fn(params, x) -> logits`` (e.g. :func:`jaxprune.models.functional`),
        or, with ``model_state``, ``apply_fn(params, model_state, x, *, train) -> (logits,
        new_model_state)`` (:func:`jaxprune.models.stateful`: batch-norm models).
      theta0: initial params stacked per seed; ticket ``i`` starts from row ``table.seed[i]``.
      dataset: a :class:`jaxprune.data.Dataset` (train / val / test splits).
      optimizer: any optax optimizer: the dense run's, and every level's unless
        ``level_optimizer`` is given. The dense run is one run of ``dense_iterations`` steps
        (its optimizer state carries over θ_k); every level starts a fresh optimizer state.
      levels: pruning levels after the dense run (0: dense only).
      rates: fraction of the remaining weights each level prunes, as
        :func:`jaxprune.tickets.next_level` takes it (scalar, per-leaf pytree, per ticket).
      iterations: training steps of every level ≥ 1 (from the rewind point).
      batch_size, eval_every: examples per step; steps between evaluations.
      key: the data order: level 0's first ``rewind_iteration`` steps use ``fold_in(key, 0)``,
        everything else ``fold_in(key, 1)`` (every level sees the same batches).
      dense_iterations: training steps of level 0 (default: ``iterations + rewind_iteration``).
      rewind_iteration: k, the late-rewinding point θ_k.
      scope, min_keep, scorers: as :func:`jaxprune.tickets.next_level`.
      grads_examples: training examples for the gradients at θ_k (criteria that need them).
      supermask_acc: also evaluate each new mask on signed-constant weights, untrained (models
        without ``model_state`` only: no running statistics belong to those weights).
      columns: extra row columns, the same for every ticket (a mapping) or one mapping per ticket.
      config: extra settings for the store's config when ``store`` is a folder.
      progress: show progress bars; ``desc`` labels the level bar.
      model_state: the models' non-trained state — batch-norm running statistics — stacked per
        seed like ``theta0`` (the third value of :func:`jaxprune.models.stateful`); the steps are
        then :func:`jaxprune.train.make_steps` ``(..., stateful=True)``. The dense run keeps
        (θ_k, its model state at k); every ticket's level starts from its seed's θ_k (reset by
        :func:`~jaxprune.tickets.next_level`) *and its seed's model state at k* — open_lth
        rewinds the whole state dict, running statistics included —, its untrained accuracy is
        evaluated with that state, and the checkpoints hold the model states, so a resumed run
        restores them. Masks cover the params only.
      augment: a :class:`jaxprune.data.Augment`, passed to every :func:`jaxprune.train.fit`
        (the dense run and every level): on-device augmentation of each training batch.
      level_optimizer: the optimizer of every level ≥ 1 (default: ``optimizer``). open_lth
        trains a level from step k of the dense schedule (a fresh momentum, the learning rate
        of step k): give the schedule shifted by k here.
      prunable: which leaves the selection prunes (:func:`jaxprune.tickets.next_level`; default
        every kernel, ``ndim ≥ 2``); ``density`` is measured over the same leaves.
      compute_dtype: passed to :func:`jaxprune.train.make_steps` when given (``jnp.bfloat16``:
        mixed precision; params and optimizer state stay float32).

    Returns:
      A :class:`Sweep`: the run folder, every committed row, and this invocation's timings.

    Raises:
      ValueError: a bad setting, before anything is written (``supermask_acc`` with
        ``model_state`` among them).
    """
    dense_iterations = (
        iterations + rewind_iteration if dense_iterations is None else dense_iterations
    )
    n_seeds = _check_settings(
        table, theta0, dataset, levels, iterations, dense_iterations, rewind_iteration,
        batch_size, eval_every,
    )  # fmt: skip
    _check_model_state(model_state, theta0, supermask_acc)
    n = table.n
    per_ticket = _ticket_columns(columns, n)
    with train_.count_compiles() as compiles, contextlib.ExitStack() as opened:
        start = time.perf_counter()
        if not isinstance(store, results.Store):
            settings = {
                "levels": levels, "iterations": iterations, "dense_iterations": dense_iterations,
                "rewind_iteration": rewind_iteration, "batch_size": batch_size,
                "eval_every": eval_every, "scope": scope, "min_keep": min_keep,
                "dataset": dataset.name,
            }  # fmt: skip
            # Only when set, so that the folders of runs without them keep their configs.
            if model_state is not None:
                settings["batch_norm"] = True
            if augment is not None:
                settings["augment"] = repr(augment)
            if compute_dtype is not None:
                settings["compute_dtype"] = str(jnp.dtype(compute_dtype))
            if prunable is not None:  # the paths it selects: a callable has no stable repr
                one = jax.tree.map(lambda p: p[0], theta0)
                flags = _checks.leaves_with_paths(masks.is_prunable(one, prunable))
                settings["prunable"] = [path for path, flag in flags if flag]
            store = opened.enter_context(
                results.Store(store, _describe(table, rates, settings, config))
            )
        clock = _Clock(compiles)
        driver = _Driver(
            store, table, apply_fn, dataset, optimizer, clock,
            batch_size=batch_size, eval_every=eval_every, key=key, progress=progress,
            columns=per_ticket, supermask_acc=supermask_acc, stateful=model_state is not None,
            augment=augment, level_optimizer=level_optimizer, prunable=prunable,
            compute_dtype=compute_dtype,
        )  # fmt: skip
        names = [f"level_{lv:03d}" for lv in range(levels + 1)]
        if not all(name in driver.done for name in names):  # a finished run restores nothing
            dense = driver.dense(theta0, model_state, dense_iterations, rewind_iteration, n_seeds)
            seed_rows = jnp.asarray(table.seed)
            w_init = tickets.gather(dense.theta_k, seed_rows)
            state_k = None if model_state is None else tickets.gather(dense.state_k, seed_rows)
            grads = None
            if "grads" in tickets.needs(table, scorers):
                x, y = (jnp.asarray(a[:grads_examples]) for a in dataset.train)
                grads = _grads_at(apply_fn, w_init, x, y, state_k)
            driver.rounds(
                w_init, state_k, tickets.gather(dense.final, seed_rows), rates, grads,
                levels=levels, iterations=iterations, offset=rewind_iteration, scope=scope,
                min_keep=min_keep, scorers=scorers, desc=desc,
            )  # fmt: skip
        store.write_csv()
        rows = store.rows()
        total = time.perf_counter() - start
    timings = {
        "total": total,
        "compile": compiles.seconds,
        "train": clock.train,
        "other": total - compiles.seconds - clock.train,
        "programs": float(compiles.programs),
        "ticket_steps": float(clock.ticket_steps),
    }
    return Sweep(store.path, rows, timings)


def _orbax_key(name: str, path: tuple[Any, ...]) -> tuple[str, ...]:
    """The key orbax's flat metadata gives the leaf at ``path`` of the saved tree ``name``."""
    parts = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
    return (name, *(str(p) for p in parts))


def _stacked_like(folder: Path, per_network: dict[str, PyTree]) -> dict[str, PyTree]:
    """Restore templates for the checkpoint in ``folder``: each tree's leaves as shape/dtype
    structs with the saved shapes, after checking that the per-network shapes agree."""
    saved = train_.checkpoint._saved_leaves(folder)
    like: dict[str, PyTree] = {}
    for name, tree in per_network.items():
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
        leaves = []
        for path, leaf in flat:
            meta = saved.get(_orbax_key(name, path))
            shape, dtype = tuple(np.shape(leaf)), jnp.result_type(leaf)
            want = tuple(getattr(meta, "shape", None) or ())
            if not want:  # not saved (or a scalar): checkpoint.restore says what differs
                leaves.append(jax.ShapeDtypeStruct(shape, dtype))
                continue
            # One network's leaf, or a stack of them on another leading axis (e.g. theta0).
            if shape != want[1:] and shape[1:] != want[1:]:
                raise ValueError(
                    f"like{jax.tree_util.keystr(path)} has shape {list(shape)}, but the checkpoint "
                    f"in {str(folder)!r} saved {name} with per-network shape {list(want[1:])} "
                    f"(stacked: {list(want)}); pass the params of the run's model."
                )
            leaves.append(jax.ShapeDtypeStruct(want, dtype))
        like[name] = jax.tree.unflatten(treedef, leaves)
    return like


def load_level(
    path: str | os.PathLike[str],
    level: int,
    like: Params,
    *,
    model_state: PyTree | None = None,
) -> dict[str, PyTree]:
    """Read what :func:`run_levels` checkpointed for a finished ``level``, per ticket.

    Returns ``{"mask", "final", "theta_k"}``, every leaf stacked over the run's tickets in table
    order: ``mask`` the level's mask, ``final`` the weights after the level's training, and
    ``theta_k`` the ticket's rewind point (its seed's θ_k from the dense run, before the level's
    reset). Level 0 (the dense run) has no mask: ``{"theta_k", "final"}``, each ticket's row
    being its seed's. With batch norm (``model_state`` given, as :func:`run_levels` took it) the
    dict also holds ``state_k`` and ``final_state``, the model states at k and after training.
    The ticket's trained-then-rewound mask, its θ_k and ``masks.apply(theta_k, mask)`` are what a
    transfer study carries to another task (:func:`jaxprune.transfer.transplant`); this is the
    one reader of the checkpoint layout, so studies never read it themselves.

    Args:
      path: the run's folder (:attr:`Sweep.path`).
      level: a level the run has committed (0 … ``levels``).
      like: the params of the run's model: one network's (``models.functional(...)[1]``) or
        the stack :func:`run_levels` took as ``theta0``; gives the tree structure and dtypes,
        the leading axes are read from the checkpoint.
      model_state: the model state of one network (or the stack), for batch-norm runs only.

    Raises:
      ValueError: ``path`` holds no run, ``level`` is not an int or not finished there (the
        message lists the finished levels), or ``like`` does not fit the saved shapes.

    Example (a run of the module example's shape):
      >>> import tempfile, jax, optax
      >>> from jaxprune import data, masks, models, sweep, tickets, train
      >>> ds = data.load("digits")
      >>> apply_fn, params, _ = models.functional(models.build("mlp", input_shape=ds.input_shape,
      ...     num_classes=10, seed=0, hidden=(16,)))
      >>> out = sweep.run_levels(tempfile.mkdtemp(), tickets.grid(1, ("large_final",),
      ...     key=jax.random.key(0)), apply_fn, train.stack([params]), ds,
      ...     optimizer=optax.adam(1e-2), levels=1, rates=0.5, iterations=20, batch_size=64,
      ...     eval_every=20, key=jax.random.key(1), progress=False)
      >>> got = sweep.load_level(out.path, 1, params)
      >>> sorted(got), float(sweep.prunable_density(got["mask"])[0]) == out.rows[-1]["density"]
      (['final', 'mask', 'theta_k'], True)
      >>> sweep.load_level(out.path, 2, params)
      Traceback (most recent call last):
      ...
      ValueError: level 2 of the run in ... is not finished (finished levels: [0, 1])...
    """
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.exists():
        raise ValueError(f"path {str(folder)!r} holds no run of run_levels (no config.json).")
    if isinstance(level, bool) or not isinstance(level, int | np.integer) or level < 0:
        raise ValueError(f"level must be a non-negative int, got {level!r}.")
    config = json.loads(config_file.read_text())
    with results.Store(folder, config, readonly=True) as store:
        done = sorted(int(u[len("level_") :]) for u in store.done() if u.startswith("level_"))
    if level not in done:
        raise ValueError(
            f"level {level} of the run in {str(folder)!r} is not finished (finished levels: "
            f"{done}); run run_levels again with the same arguments to compute it."
        )
    seeds = jnp.asarray([int(t[0]) for t in config["tickets"]], jnp.int32)
    states = {} if model_state is None else {"state_k": model_state, "final_state": model_state}
    dense_dir = folder / "state" / "level_000"
    dense = train_.checkpoint.restore(
        dense_dir, like=_stacked_like(dense_dir, {"theta_k": like, "final": like, **states})
    )
    per_ticket = {k: tickets.gather(v, seeds) for k, v in dense.items() if k != "final_state"}
    if level == 0:
        if model_state is not None:
            per_ticket["final_state"] = tickets.gather(dense["final_state"], seeds)
        return {**per_ticket, "final": tickets.gather(dense["final"], seeds)}
    level_dir = folder / "state" / f"level_{level:03d}"
    bools = jax.tree.map(lambda p: np.zeros(np.shape(p), bool), like)
    trained = train_.checkpoint.restore(
        level_dir,
        like=_stacked_like(
            level_dir,
            {"mask": bools, "final": like,
             **({} if model_state is None else {"model_state": model_state})},
        ),
    )  # fmt: skip
    out = {"mask": trained["mask"], "final": trained["final"], "theta_k": per_ticket["theta_k"]}
    if model_state is not None:
        out["state_k"] = per_ticket["state_k"]
        out["final_state"] = trained["model_state"]
    return out


def _check_model_state(model_state: PyTree | None, theta0: Params, supermask_acc: bool) -> None:
    if model_state is None:
        return
    if supermask_acc:
        raise ValueError(
            "supermask_acc must be False with model_state (batch norm): the supermask's "
            "signed-constant weights have no running statistics of their own, and θ_k's do not "
            "fit them; got supermask_acc=True."
        )
    n_seeds = int(np.shape(jax.tree.leaves(theta0)[0])[0])
    for path, leaf in _checks.leaves_with_paths(model_state):
        if np.shape(leaf)[:1] != (n_seeds,):
            raise ValueError(
                f"model_state must be stacked per seed like theta0 (leading axis {n_seeds}), "
                f"but model_state{path} has shape {list(np.shape(leaf))}; stack the seeds' "
                "states with train.stack."
            )


def _ticket_columns(
    columns: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None, n: int
) -> list[dict[str, Any]]:
    if columns is None:
        return [{} for _ in range(n)]
    if isinstance(columns, Mapping):
        return [dict(columns) for _ in range(n)]
    if len(columns) != n:
        raise ValueError(
            f"columns must be one mapping for every ticket or one per ticket ({n}), got "
            f"{len(columns)}."
        )
    return [dict(c) for c in columns]


class _Dense(NamedTuple):
    """Level 0's results, per seed: θ_k, the model state at k, the dense weights."""

    theta_k: Params
    state_k: PyTree | None
    final: Params


class _Driver:
    """The per-level work of :func:`run_levels` (state kept between levels)."""

    def __init__(
        self, store: results.Store, table: tickets.Table, apply_fn: Any, dataset: data_.Dataset,
        optimizer: optax.GradientTransformation, clock: _Clock, *, batch_size: int,
        eval_every: int, key: Key, progress: bool, columns: list[dict[str, Any]],
        supermask_acc: bool, stateful: bool, augment: data_.Augment | None,
        level_optimizer: optax.GradientTransformation | None, prunable: Prunable,
        compute_dtype: Any,
    ) -> None:  # fmt: skip
        self.store, self.table, self.ds, self.clock = store, table, dataset, clock
        self.state_dir = store.path / "state"
        self.done = set(store.done())
        self.forward = any(p != "zero" for p in table.pruned)
        self.stateful, self.augment, self.prunable = stateful, augment, prunable
        options: dict[str, Any] = {"stateful": stateful}
        if compute_dtype is not None:
            options["compute_dtype"] = compute_dtype
        self.steps = train_.make_steps(
            apply_fn, level_optimizer or optimizer, mode="forward" if self.forward else "zero",
            **options,
        )  # fmt: skip
        self.dense_steps = train_.make_steps(apply_fn, optimizer, **options)
        self.batch_size, self.eval_every, self.progress = batch_size, eval_every, progress
        self.key, self.supermask_acc = key, supermask_acc
        self.base = [
            {
                "ticket": i, "seed": t.seed, "criterion": t.criterion, "kept": t.kept,
                "pruned": t.pruned, "source": t.source, **columns[i],
            }
            for i, t in enumerate(table.tickets())
        ]  # fmt: skip

    def fit(
        self, steps: train_.Steps, state: train_.TrainState, mask: PyTree, frozen: PyTree | None,
        *, iterations: int, data_key: Key, desc: str,
    ) -> tuple[train_.TrainState, train_.History]:  # fmt: skip
        n = int(jax.tree.leaves(mask)[0].shape[0])
        extra = {} if self.augment is None else {"augment": self.augment}
        state, hist = self.clock.fit(
            steps, state, mask, self.ds.train, self.ds.val, self.ds.test,
            iterations=iterations, batch_size=self.batch_size,
            eval_every=min(self.eval_every, iterations), data_key=data_key, frozen=frozen,
            tickets=True, mesh=train_.mesh_for(n), progress=self.progress, desc=desc,
            # A diverged ticket is a result: its rows say NaN, and the other tickets go on.
            check_finite=False, **extra,
        )  # fmt: skip
        # Back on one device, where the next round gathers tickets across the whole table.
        return jax.device_put(state, jax.devices()[0]), hist

    def _saved(self, trees: dict[str, PyTree]) -> dict[str, PyTree]:
        # Model states only where there are some: a plain model's checkpoints keep their form.
        return {k: v for k, v in trees.items() if v is not None and jax.tree.leaves(v)}

    def dense(
        self, theta0: Params, state0: PyTree | None, dense_iterations: int, k: int, n_seeds: int
    ) -> _Dense:
        """Level 0 (θ_k, the model state at k and the dense weights per seed): restored, or
        trained and committed. One run of ``dense_iterations`` steps: the optimizer state (and
        the running statistics) carry over step k."""
        like = self._saved(
            {"theta_k": theta0, "final": theta0, "state_k": state0, "final_state": state0}
        )
        if "level_000" in self.done:
            try:
                saved = train_.checkpoint.restore(self.state_dir / "level_000", like=like)
                return _Dense(saved["theta_k"], saved.get("state_k", state0), saved["final"])
            except (ValueError, OSError) as err:
                self._uncommit(0, err)
        _clear_state(self.state_dir, 0)
        ones = _ones(theta0)
        state = _init_states(self.dense_steps, theta0, state0)
        if k:
            state, _ = self.fit(
                self.dense_steps, state, ones, None, iterations=k,
                data_key=jax.random.fold_in(self.key, 0), desc="dense to θ_k",
            )  # fmt: skip
        theta_k, state_k = state.params, state.model_state if self.stateful else None
        state, hist = self.fit(
            self.dense_steps, state, ones, None, iterations=dense_iterations - k,
            data_key=jax.random.fold_in(self.key, 1), desc=f"level 0 (dense, {n_seeds} seeds)",
        )  # fmt: skip
        final_state = state.model_state if self.stateful else None
        train_.checkpoint.save(
            self.state_dir / "level_000",
            self._saved(
                {"theta_k": theta_k, "final": state.params, "state_k": state_k,
                 "final_state": final_state}
            ),
        )  # fmt: skip
        seeds = np.asarray(self.table.seed)
        rows = [
            {
                **self.base[i], "level": 0, "density": 1.0,
                **history_columns(hist, int(seeds[i]), k),
                "untrained_acc": None, **({"supermask_acc": None} if self.supermask_acc else {}),
                "iterations": dense_iterations,
            }
            for i in range(self.table.n)
        ]  # fmt: skip
        self.store.write("level_000", rows)
        self.done.add("level_000")
        return _Dense(theta_k, state_k, state.params)

    def _uncommit(self, level: int, err: Exception) -> None:
        """A committed level whose checkpoint is unreadable is recomputed (documented rule)."""
        name = f"level_{level:03d}"
        self.store.discard(name, f"its checkpoint {self.state_dir / name} is unreadable ({err})")
        self.done.discard(name)

    def rounds(
        self, w_init: Params, state_k: PyTree | None, final0: Params, rates: Any,
        grads: PyTree | None, *, levels: int, iterations: int, offset: int, scope: str,
        min_keep: int, scorers: Mapping[str, tickets.Scorer] | None, desc: str,
    ) -> None:  # fmt: skip
        """Levels 1…``levels``: every level not committed is computed from the state of the level
        before it — held from this run, restored from its checkpoint, or (unreadable) recomputed."""
        self.w_init, self.state_k, self.rates, self.grads = w_init, state_k, rates, grads
        self.levels, self.iterations, self.offset = levels, iterations, offset
        self.scope, self.min_keep, self.scorers = scope, min_keep, scorers
        self.latest: tuple[int, PyTree, Params] = (0, _ones(w_init), final0)
        bar = tqdm(total=levels, desc=desc, unit="level", disable=not self.progress)
        for level in range(1, levels + 1):
            bar.set_postfix(tickets=self.table.n, level=level)
            if f"level_{level:03d}" not in self.done:
                mask, final = self._state(level - 1)
                self.latest = (level, *self._compute(level, mask, final))
            bar.update(1)
        bar.close()

    def _state(self, level: int) -> tuple[PyTree, Params]:
        """The masks and trained weights after ``level``."""
        if self.latest[0] == level:
            return self.latest[1], self.latest[2]
        like = self._saved(
            {"mask": self.latest[1], "final": self.latest[2], "model_state": self.state_k}
        )
        try:
            saved = train_.checkpoint.restore(self.state_dir / f"level_{level:03d}", like=like)
            return saved["mask"], saved["final"]
        except (ValueError, OSError) as err:
            self._uncommit(level, err)
        return self._compute(level, *self._state(level - 1))

    def _compute(self, level: int, mask: PyTree, final: Params) -> tuple[PyTree, Params]:
        """Prune, evaluate, train and commit one level; returns its masks and trained weights."""
        name = f"level_{level:03d}"
        _clear_state(self.state_dir, level)
        w_init = self.w_init
        new = tickets.next_level(
            self.table, level, w_init, final, mask, self.rates, grads=self.grads,
            scope=self.scope, min_keep=self.min_keep, scorers=self.scorers,
            prunable=self.prunable,
        )  # fmt: skip
        jax.block_until_ready(new)  # so that its time is not counted as training
        frozen = new.frozen if self.forward else None
        extra = {"untrained_acc": self._accuracy(new.params, new.mask, frozen)}
        if self.supermask_acc:
            signed = _signed_constant(w_init, new.mask)
            extra["supermask_acc"] = self._accuracy(signed, new.mask, None)
        state, hist = self.fit(
            self.steps, _init_states(self.steps, new.params, self.state_k), new.mask, frozen,
            iterations=self.iterations, data_key=jax.random.fold_in(self.key, 1),
            desc=f"level {level}/{self.levels} ({self.table.n} tickets)",
        )  # fmt: skip
        train_.checkpoint.save(
            self.state_dir / name,
            self._saved(
                {"mask": new.mask, "final": state.params,
                 "model_state": state.model_state if self.stateful else None}
            ),
        )  # fmt: skip
        dens = prunable_density(new.mask, self.prunable)
        rows = [
            {
                **self.base[i], "level": level, "density": float(dens[i]),
                **history_columns(hist, i, self.offset),
                **{k: float(v[i]) for k, v in extra.items()}, "iterations": self.iterations,
            }
            for i in range(self.table.n)
        ]  # fmt: skip
        self.store.write(name, rows)
        self.done.add(name)
        return new.mask, state.params

    def _accuracy(self, params: Params, mask: PyTree, frozen: PyTree | None) -> np.ndarray:
        """Test accuracy of each (untrained) ticket, on the host — with the model state at k."""
        xs, ys = self.ds.test
        return np.asarray(
            train_.evaluate(
                self.steps, params, mask, frozen, xs, ys, tickets=True, model_state=self.state_k
            )[1]
        )
