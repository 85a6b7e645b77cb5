"""Rewind points, trained weights and masks of a ticket batch survive a save / restore exactly."""

from __future__ import annotations

import re
import time

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


# --- damaged checkpoints: a ValueError naming the folder, never a raw orbax / JSON error --------

METADATA_FILES = ("_METADATA", "_CHECKPOINT_METADATA")


def _saved(tmp_path):
    tree = {
        "theta0": {"w": np.arange(600.0, dtype=np.float32).reshape(20, 30)},
        "step": np.arange(3),
    }
    checkpoint.save(tmp_path / "ckpt", tree)
    return tmp_path / "ckpt", tree


def _array_files(folder):
    """Every file orbax wrote besides its JSON metadata (the arrays and their index)."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.name not in METADATA_FILES]
    return [p for p in files if p.name != "commit_success.txt"]


@pytest.mark.parametrize("name", METADATA_FILES)
@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"garbage{{", "is not JSON: JSONDecodeError"),
        (b"\xff\xff\xff\xff", "is not JSON: UnicodeDecodeError"),
        (b"[1, 2]", "holds a JSON list, not an object"),
    ],
    ids=["garbage", "not_utf8", "json_list"],
)
def test_garbage_metadata_names_the_damaged_folder(tmp_path, name, content, what):
    folder, tree = _saved(tmp_path)
    (folder / name).write_bytes(content)
    with pytest.raises(ValueError) as err:
        checkpoint.restore(folder, like=tree)
    message = str(err.value)
    assert message.startswith(f"the checkpoint in {str(folder.absolute())!r} is damaged (")
    assert f"its metadata file {name} {what}" in message
    assert "Delete that folder and compute what it held again" in message


def test_metadata_that_is_not_orbaxs_or_is_missing_names_the_damaged_folder(tmp_path):
    folder, tree = _saved(tmp_path)
    (folder / "_METADATA").write_text('{"some": "json"}')
    with pytest.raises(
        ValueError, match=r"is damaged \(its metadata file _METADATA is not orbax's"
    ):
        checkpoint.restore(folder, like=tree)
    (folder / "_METADATA").unlink()
    with pytest.raises(ValueError, match=r"is damaged \(its metadata file _METADATA is missing\)"):
        checkpoint.restore(folder, like=tree)


# Orbax reads the arrays on tensorstore threads and closes its event loop as soon as one read
# fails; a read still in flight then reports "RuntimeError: Event loop is closed" to
# sys.unraisablehook, within milliseconds (orbax's noise, with or without jaxprune's checks).
# The test waits for it, so that it comes while this filter applies.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["truncated", "missing", "garbled"])
def test_damaged_array_files_name_the_damaged_folder(tmp_path, damage):
    folder, tree = _saved(tmp_path)
    files = _array_files(folder)
    assert files  # orbax wrote the arrays somewhere besides the metadata
    for f in files:
        data = f.read_bytes()
        if damage == "truncated":
            f.write_bytes(data[: len(data) // 2])
        elif damage == "missing":
            f.unlink()
        else:  # same length, every byte flipped
            f.write_bytes(bytes(b ^ 0xFF for b in data))
    with pytest.raises(ValueError) as err:
        checkpoint.restore(folder, like=tree)
    time.sleep(0.2)  # orbax's stray reads (above)
    message = str(err.value)
    assert message.startswith(f"the checkpoint in {str(folder.absolute())!r} is damaged (")
    assert "an array file is missing, truncated or garbled" in message
    assert "Delete that folder" in message


def test_a_like_that_differs_from_what_was_saved_names_the_paths(tmp_path):
    folder, tree = _saved(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"like does not match the checkpoint in .*: saved there but not in like: step\. ",
    ):
        checkpoint.restore(folder, like={"theta0": tree["theta0"]})
    with pytest.raises(
        ValueError, match=r"like does not match the checkpoint in .*: not saved there: extra\. "
    ):
        checkpoint.restore(folder, like={**tree, "extra": np.zeros(2)})
    with pytest.raises(
        ValueError, match=re.escape("like/step has shape [4] but the checkpoint in")
    ):
        checkpoint.restore(folder, like={**tree, "step": np.arange(4)})
    # The checkpoint itself is intact: the right like still restores it.
    np.testing.assert_array_equal(checkpoint.restore(folder, like=tree)["step"], np.arange(3))
