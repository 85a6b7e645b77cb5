"""Text data (corpora, tokenisation, windows, splits, the tfds path), sequence targets in the
training engine, and perplexity: all against numpy and plain Python loops."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from jaxprune import data, metrics, train
from jaxprune.train import step

V, D = 7, 5  # the tiny token model's vocabulary and embedding width


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test here runs offline: opening a connection fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to open a network connection: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def corpus() -> str:
    return data.text_corpus("pydoc")


def _reference_windows(tokens: list[int], context: int) -> dict[str, tuple[np.ndarray, ...]]:
    """The 90 / 5 / 5 contiguous splits and their windows, by a Python slicing loop."""
    n = len(tokens)
    n_train = math.floor(0.9 * n)
    n_val = (n - n_train) // 2
    bounds = {
        "train": (0, n_train),
        "val": (n_train, n_train + n_val),
        "test": (n_train + n_val, n),
    }
    out = {}
    for split, (lo, hi) in bounds.items():
        xs, ys, i = [], [], lo
        while i + context + 1 <= hi:  # a window and its shifted targets inside the split
            xs.append(tokens[i : i + context])
            ys.append(tokens[i + 1 : i + context + 1])
            i += context
        out[split] = (np.array(xs), np.array(ys))
    return out


# ---- corpora -------------------------------------------------------------------------------------


def test_pydoc_corpus_is_the_sorted_topics_and_deterministic(corpus: str) -> None:
    from pydoc_data import topics

    keys = sorted(topics.topics)
    assert len(corpus) == sum(len(topics.topics[k]) for k in keys) + 2 * (len(keys) - 1)
    assert corpus.startswith(topics.topics[keys[0]] + "\n\n")
    assert corpus.endswith("\n\n" + topics.topics[keys[-1]])
    assert data.text_corpus() == corpus  # pydoc is the default, and the same every call


# ---- tokens, windows, splits ---------------------------------------------------------------------


@pytest.mark.parametrize("level", ["char", "byte"])
def test_windows_equal_a_slicing_loop(corpus: str, level: str) -> None:
    context = 48
    ds = data.load_text("pydoc", context=context, level=level)
    if level == "char":
        index = {c: i for i, c in enumerate(sorted(set(corpus)))}
        tokens = [index[c] for c in corpus]
    else:
        tokens = list(corpus.encode("utf-8"))
    want = _reference_windows(tokens, context)
    for split in ("train", "val", "test"):
        x, y = getattr(ds, split)
        assert x.dtype == np.int32 and y.dtype == np.int32
        np.testing.assert_array_equal(x, want[split][0])
        np.testing.assert_array_equal(y, want[split][1])
        assert not x.flags.writeable and not y.flags.writeable
    assert ds.input_shape == (context,)
    assert ds.num_classes == (len(set(corpus)) if level == "char" else 256)


def test_splits_are_contiguous_and_disjoint(corpus: str) -> None:
    context = 32
    ds = data.load_text("pydoc", context=context)
    n = len(corpus)
    n_train = n * 9 // 10
    n_val = (n - n_train) // 2
    starts = {"train": 0, "val": n_train, "test": n_train + n_val}
    ends = {"train": n_train, "val": n_train + n_val, "test": n}
    for split in ("train", "val", "test"):
        x, y = getattr(ds, split)
        covered = len(x) * context + 1  # the windows' tokens and the last target
        # Contiguous: the split's text starts where the previous one ended; no window is lost
        # but the partial last one, and no target reaches into the next split.
        assert data.decode(ds, x.reshape(-1)) == corpus[starts[split] :][: len(x) * context]
        assert starts[split] + covered <= ends[split] < starts[split] + covered + context
        assert data.decode(ds, y[-1])[-1] == corpus[starts[split] + covered - 1]


def test_vocab_covers_every_character_sorted(corpus: str) -> None:
    ds = data.load_text("pydoc", context=16)
    assert ds.vocab is not None
    assert list(ds.vocab) == sorted(set(corpus))  # every character, each once, sorted
    assert data.load_text("pydoc", context=16, level="byte").vocab is None


@pytest.mark.parametrize("level", ["char", "byte"])
def test_decode_round_trips(corpus: str, level: str) -> None:
    ds = data.load_text("pydoc", context=64, level=level)
    n = len(ds.train.x) * 64
    text = data.decode(ds, ds.train.x.reshape(-1))
    if level == "char":
        assert text == corpus[:n]
    else:
        assert text == corpus.encode("utf-8")[:n].decode("utf-8", errors="replace")
    assert data.decode(ds, ds.train.x[0, 0]) == corpus[0]  # one token
    assert data.decode(ds, np.zeros(0, np.int32)) == ""


def test_load_by_name_is_load_text(corpus: str) -> None:
    by_name = data.load("pydoc", context=24, seed=3)  # the seed does not change text splits
    direct = data.load_text("pydoc", context=24)
    for split in ("train", "val", "test"):
        for a, b in zip(getattr(by_name, split), getattr(direct, split), strict=True):
            np.testing.assert_array_equal(a, b)
    assert by_name.vocab == direct.vocab and by_name.num_classes == direct.num_classes
    assert data.load("pydoc").input_shape == (64,)  # the default context
    assert {"pydoc", "tiny_shakespeare"} <= set(data.names())
    assert data.TEXT_SETS == ("pydoc", "tiny_shakespeare")


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("context", [0, -3, 2.0, True])
def test_context_must_be_a_positive_int(context: object) -> None:
    with pytest.raises(ValueError, match=r"context must be a positive int"):
        data.load_text("pydoc", context=context)  # type: ignore[arg-type]


def test_context_longer_than_a_split(corpus: str) -> None:
    n = len(corpus)
    n_val = (n - n * 9 // 10) // 2
    data.load_text("pydoc", context=n_val - 1)  # the longest that fits: one window per split
    with pytest.raises(ValueError, match=rf"context must be at most {n_val - 1} for 'pydoc'"):
        data.load_text("pydoc", context=n_val)


def test_unknown_level_and_name() -> None:
    with pytest.raises(ValueError, match=r"level.*'word'"):
        data.load_text("pydoc", level="word")
    with pytest.raises(ValueError, match=r"text corpus name.*'wiki'"):
        data.load_text("wiki")
    with pytest.raises(ValueError, match=r"text corpus name.*'digits'"):
        data.text_corpus("digits")


def test_options_for_the_wrong_kind_of_set() -> None:
    with pytest.raises(ValueError, match=r"context is only for the text sets.*'digits'"):
        data.load("digits", context=8)
    with pytest.raises(ValueError, match=r"val_size \(--val-size\) must be None for the text set"):
        data.load("pydoc", val_size=100)
    with pytest.raises(ValueError, match=r"normalize=True is only for image sets"):
        data.load("pydoc", normalize=True)
    with pytest.raises(ValueError, match=r"only image datasets can be normalised"):
        data.normalize(data.load_text("pydoc", context=16))


def test_decode_refuses_bad_tokens_and_image_sets() -> None:
    ds = data.load_text("pydoc", context=16)
    with pytest.raises(ValueError, match=rf"tokens must be in \[0, {ds.num_classes}\)"):
        data.decode(ds, [0, ds.num_classes])
    with pytest.raises(ValueError, match=r"tokens must be one integer token or a 1-D"):
        data.decode(ds, ds.train.x[:2])
    with pytest.raises(ValueError, match=r"ds must be a text dataset"):
        data.decode(data.load("synthetic"), [0])


# ---- tiny_shakespeare through tensorflow-datasets ------------------------------------------------


def test_tiny_shakespeare_under_mock_data() -> None:
    with tfds.testing.mock_data(num_examples=40):
        sources = tfds.data_source("tiny_shakespeare", split=["train", "validation", "test"])
        want = "".join(str(s[i]["text"]) for s in sources for i in range(len(s)))
        corpus = data.text_corpus("tiny_shakespeare")
        ds = data.load("tiny_shakespeare", context=8)
    assert corpus == want and len(corpus) > 1000
    index = {c: i for i, c in enumerate(sorted(set(corpus)))}
    reference = _reference_windows([index[c] for c in corpus], 8)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(ds, split).x, reference[split][0])
        np.testing.assert_array_equal(getattr(ds, split).y, reference[split][1])
    assert ds.vocab == "".join(sorted(set(corpus)))


def test_tiny_shakespeare_prepared_as_array_record_is_read_exactly(tmp_path: Path) -> None:
    """A real array_record copy, written here without TF: its texts come back as bytes."""
    texts = {
        "train": "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 3,
        "validation": "All:\nSpeak, speak.\n" * 2,
        "test": "You are all resolved rather to die than to famish? \u2014 Caf\u00e9\n",
    }

    class Fake(tfds.builder_cls("tiny_shakespeare"), skip_registration=True):  # type: ignore[misc]
        def _split_generators(self, dl_manager):
            return {split: iter([(split, {"text": text})]) for split, text in texts.items()}

    Fake.name = "tiny_shakespeare"
    Fake(data_dir=str(tmp_path), file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    whole = texts["train"] + texts["validation"] + texts["test"]
    assert data.text_corpus("tiny_shakespeare", data_dir=tmp_path) == whole
    ds = data.load_text("tiny_shakespeare", context=4, level="byte", data_dir=tmp_path)
    reference = _reference_windows(list(whole.encode("utf-8")), 4)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(ds, split).x, reference[split][0])


def test_tiny_shakespeare_not_prepared(tmp_path: Path) -> None:
    with pytest.raises(data.DatasetNotAvailableError) as caught:
        data.load("tiny_shakespeare", data_dir=tmp_path)
    msg = str(caught.value)
    assert "dataset 'tiny_shakespeare' is not prepared on this machine" in msg
    assert str(tmp_path / "tiny_shakespeare") in msg and "does not exist" in msg
    assert "tfds.data_source('tiny_shakespeare', download=True)" in msg
    assert "never downloads" in msg
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert list(tmp_path.iterdir()) == []


# ---- the engine on sequence targets --------------------------------------------------------------


def token_apply(p: dict, x: jax.Array) -> jax.Array:
    """A tiny bigram-ish model: an embedding table and a dense layer, (B, T) → (B, T, V)."""
    return p["emb"][x] @ p["w"] + p["b"][None, None]


def token_params(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "emb": jnp.asarray(rng.normal(size=(V, D)), jnp.float32),
        "w": jnp.asarray(rng.normal(size=(D, V)) * 0.5, jnp.float32),
        "b": jnp.zeros(V, jnp.float32),
    }


def np_token_nll(p: dict, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token NLL and correctness, in float64 numpy: (n, T) each."""
    emb, w, b = (np.asarray(p[k], np.float64) for k in ("emb", "w", "b"))
    logits = emb[x] @ w + b
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
    return nll, (logp.argmax(-1) == y).astype(np.float64)


def token_data(n: int, t: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of a noisy periodic stream (next token mostly the successor mod V): learnable."""
    rng = np.random.default_rng(seed)
    stream = (np.arange(n * t + 1) + (rng.random(n * t + 1) < 0.1)) % V
    return (
        stream[:-1].reshape(n, t).astype(np.int32),
        stream[1:].reshape(n, t).astype(np.int32),
    )


def test_summed_eval_means_each_example_over_its_positions() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 6, V)).astype(np.float32)
    labels = rng.integers(0, V, (4, 6)).astype(np.int32)
    valid = np.array([True, False, True, True])
    z = logits.astype(np.float64)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    right = logits.argmax(-1) == labels
    out = step.summed_eval(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(valid))
    np.testing.assert_allclose(float(out["loss"]), (nll.mean(1) * valid).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(out["correct"]), (right.mean(1) * valid).sum(), rtol=1e-6)
    # Plain classification is unchanged: the sum over the rows.
    flat = step.summed_eval(jnp.asarray(logits[:, 0]), jnp.asarray(labels[:, 0]))
    np.testing.assert_allclose(float(flat["loss"]), nll[:, 0].sum(), rtol=1e-5)


def test_fit_on_tokens_reports_the_mean_token_nll() -> None:
    train_xy, val_xy, test_xy = (token_data(n, 10, s) for n, s in ((64, 0), (23, 1), (17, 2)))
    steps = train.make_steps(token_apply, optax.adam(0.05))
    params = token_params(0)
    mask = jax.tree.map(lambda a: jnp.ones(a.shape, bool), params)
    state, hist = train.fit(
        steps,
        steps.init(params),
        mask,
        train_xy,
        val_xy,
        test_xy,
        iterations=40,
        batch_size=8,
        eval_every=20,
        eval_batch=5,  # 23 and 17 windows: padded last batches
        data_key=jax.random.key(0),
        progress=False,
    )
    for split, xy in (("val", val_xy), ("test", test_xy)):
        nll, right = np_token_nll(state.params, *xy)
        np.testing.assert_allclose(getattr(hist, f"{split}_loss")[-1], nll.mean(), rtol=1e-5)
        np.testing.assert_allclose(getattr(hist, f"{split}_acc")[-1], right.mean(), rtol=1e-5)
    assert hist.val_loss[-1] < 0.8 * math.log(
        V
    )  # it learnt the successor rule (a uniform guess: log V)
    assert hist.val_loss[-1] < hist.val_loss[0]


def test_fit_refuses_targets_that_do_not_match_the_logits() -> None:
    steps = train.make_steps(token_apply, optax.sgd(0.1))
    params = token_params(0)
    mask = jax.tree.map(lambda a: jnp.ones(a.shape, bool), params)
    x, y = token_data(8, 4, 0)
    kw = {"iterations": 1, "batch_size": 4, "eval_every": 1, "data_key": jax.random.key(0)}
    with pytest.raises(ValueError, match=r"train\[1\] \(y\) must have shape \[8, 4\]"):
        train.fit(steps, steps.init(params), mask, (x, y[:, 0]), (x, y), (x, y), **kw)
    with pytest.raises(ValueError, match=r"val\[1\] \(y\) must have 8 rows"):
        train.fit(steps, steps.init(params), mask, (x, y), (x, y[:5]), (x, y), **kw)
    with pytest.raises(ValueError, match=rf"test\[1\] \(y\) must hold class labels in \[0, {V}\)"):
        train.fit(steps, steps.init(params), mask, (x, y), (x, y), (x, y + V), **kw)


def test_evaluate_masks_padding_and_pruned_weights() -> None:
    x, y = token_data(13, 6, 3)
    params = token_params(1)
    prune = np.random.default_rng(0).random((D, V)) < 0.5
    mask = {"emb": jnp.ones((V, D), bool), "w": jnp.asarray(~prune), "b": jnp.ones(V, bool)}
    steps = train.make_steps(token_apply, optax.sgd(0.1))
    loss, acc = train.evaluate(
        steps, params, mask, None, jnp.asarray(x), jnp.asarray(y), eval_batch=4
    )
    masked = {**params, "w": jnp.where(prune, 0.0, params["w"])}
    nll, right = np_token_nll(masked, x, y)
    np.testing.assert_allclose(float(loss), nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(acc), right.mean(), rtol=1e-5)
    # Two tickets at once: each its own numbers.
    stacked = train.stack([params, token_params(2)])
    masks2 = train.stack([mask, mask])
    losses, _ = train.evaluate(
        steps, stacked, masks2, None, jnp.asarray(x), jnp.asarray(y), eval_batch=4, tickets=True
    )
    other = {**token_params(2), "w": jnp.where(prune, 0.0, token_params(2)["w"])}
    np.testing.assert_allclose(
        np.asarray(losses), [nll.mean(), np_token_nll(other, x, y)[0].mean()], rtol=1e-5
    )


# ---- perplexity ----------------------------------------------------------------------------------


def test_perplexity_is_exp_of_the_mean_token_nll() -> None:
    x, y = token_data(11, 9, 4)
    params = token_params(3)
    nll, _ = np_token_nll(params, x, y)
    for batch_size in (4, 11, 64):  # padded last batch, one exact batch, one smaller split
        got = metrics.perplexity(token_apply, params, (x, y), batch_size=batch_size)
        np.testing.assert_allclose(got, np.exp(nll.mean()), rtol=1e-5)


def test_perplexity_of_uniform_logits_is_the_vocabulary_size() -> None:
    ds = data.load_text("pydoc", context=16)
    vocab = ds.num_classes

    def uniform(p: dict, x: jax.Array) -> jax.Array:
        return jnp.broadcast_to(p["b"], (*x.shape, vocab))

    got = metrics.perplexity(uniform, {"b": jnp.full(vocab, 0.3)}, ds.val, batch_size=100)
    # float32 log-sum-exp of 103 equal terms: an error of ~1e-5 in log V, so ~1e-5 relative.
    np.testing.assert_allclose(got, vocab, rtol=1e-4)


def test_perplexity_refuses_bad_input() -> None:
    x, y = token_data(4, 3, 0)
    params = token_params(0)
    with pytest.raises(ValueError, match=r"split must be a pair"):
        metrics.perplexity(token_apply, params, x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"one row of targets per example"):
        metrics.perplexity(token_apply, params, (x, y[:2]))
    with pytest.raises(ValueError, match=r"must hold integer targets"):
        metrics.perplexity(token_apply, params, (x, y.astype(np.float32)))
    with pytest.raises(ValueError, match=rf"targets in \[0, {V}\)"):
        metrics.perplexity(token_apply, params, (x, y + V))
    with pytest.raises(ValueError, match=r"must return logits of shape \[4, 3\] \+ \[vocab\]"):
        metrics.perplexity(lambda p, xx: token_apply(p, xx)[:, 0], params, (x, y))
    with pytest.raises(ValueError, match=r"batch_size must be a positive int"):
        metrics.perplexity(token_apply, params, (x, y), batch_size=0)
