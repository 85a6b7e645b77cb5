"""Rewind points, trained weights and masks of a ticket batch survive a save / restore exactly."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from jaxprune import masks, models, train
from jaxprune.train import checkpoint


def _batch():
    nets = [models.build("mlp", input_shape=(4, 4, 1), num_classes=3, seed=s) for s in range(3)]
    theta0 = train.stack([models.functional(n)[1] for n in nets])
    mask = jax.vmap(masks.ones)(theta0)
    mask = jax.tree.map(lambda m: m.at[:, 0].set(False) if m.ndim > 2 else m, mask)
    trained = jax.tree.map(lambda w: w * 2.0 + 1.0, theta0)
    return {"theta0": theta0, "theta_k": trained, "mask": mask, "step": np.arange(3)}


def test_round_trip_is_exact(tmp_path):
    tree = _batch()
    checkpoint.save(tmp_path / "ckpt", tree)
    back = checkpoint.restore(tmp_path / "ckpt", like=tree)
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(back), strict=True):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_existing_checkpoint_is_not_overwritten_by_mistake(tmp_path):
    tree = _batch()
    checkpoint.save(tmp_path / "ckpt", tree)
    changed = jax.tree.map(lambda x: x, tree)
    changed["step"] = np.arange(3) + 10
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        checkpoint.save(tmp_path / "ckpt", changed)
    np.testing.assert_array_equal(
        checkpoint.restore(tmp_path / "ckpt", like=tree)["step"], np.arange(3)
    )
    checkpoint.save(tmp_path / "ckpt", changed, overwrite=True)
    np.testing.assert_array_equal(
        checkpoint.restore(tmp_path / "ckpt", like=tree)["step"], np.arange(3) + 10
    )


def test_restoring_nothing_names_the_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        checkpoint.restore(tmp_path / "missing", like={"a": np.zeros(2)})


def test_train_state_with_batch_norm_statistics_round_trips(tmp_path):
    """A stacked TrainState of a BN model: params, Adam state, step and running statistics."""
    nets = [
        models.instantiate(
            lambda rngs: models.VGG((4, 4, 1), (2, "pool", 3), 3, hidden=4, rngs=rngs), seed
        )
        for seed in range(2)
    ]
    forms = [models.stateful(n) for n in nets]
    steps = train.make_steps(forms[0][0], optax.adam(1e-3), stateful=True)
    state = train.stack([steps.init(p, s) for _, p, s in forms])
    # Distinct running statistics per ticket, so that a mix-up would show.
    state = state._replace(
        model_state=jax.tree.map(lambda v: v + np.arange(2.0)[:, None] + 0.5, state.model_state)
    )
    checkpoint.save(tmp_path / "state", state)
    back = checkpoint.restore(tmp_path / "state", like=state)
    assert isinstance(back, train.TrainState)
    assert jax.tree.structure(back) == jax.tree.structure(state)
    assert jax.tree.leaves(back.model_state)  # the statistics are there, not dropped
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back), strict=True):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A state without model state (the default ()) round-trips too.
    plain = train.TrainState(state.params, state.opt_state, state.step)
    checkpoint.save(tmp_path / "plain", plain)
    assert checkpoint.restore(tmp_path / "plain", like=plain).model_state == ()
