"""Quickstart: iterative magnitude pruning of LeNet-300-100 on the bundled digits, tickets vmapped.

For each of ``--seeds`` seeds, two tickets train side by side in one vmapped program per level:
the lottery ticket (kept weights rewound to θ₀) and its control (same mask, random
re-initialisation, ``reinit``). Each round prunes the papers' rates (fc 20%, output 10%) of the
remaining weights by ``large_final`` and retrains. Prints one row per level.

    python -m experiments.quickstart --rounds 5 --iterations 1000 --seeds 2

Expected on a 2-core CPU: about a minute; dense ≈ 97% test accuracy on digits.
This is the stand-in main job until the full Deconstructing study lands (issue 4).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import criteria, data, masks, models, reset, select, train


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="pruning rounds after the dense run")
    p.add_argument("--iterations", type=int, default=1000, help="training steps per level")
    p.add_argument("--seeds", type=int, default=2, help="independent seeds (tickets ×2 each)")
    p.add_argument("--batch-size", type=int, default=60)
    p.add_argument("--lr", type=float, default=1.2e-3)
    args = p.parse_args(argv)
    for name in ("rounds", "iterations", "seeds", "batch_size"):
        if getattr(args, name) < (0 if name == "rounds" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    ds = data.load("digits", seed=0)
    nets = [
        models.build("lenet300_100", input_shape=ds.input_shape, num_classes=ds.num_classes, seed=s)
        for s in range(args.seeds)
    ]
    funcs = [models.functional(n) for n in nets]
    apply_fn = funcs[0][0]
    # Tickets: [seed0-rewind, seed0-reinit, seed1-rewind, ...]
    theta0 = train.stack([f[1] for f in funcs for _ in range(2)])
    kind = np.array([k for _ in range(args.seeds) for k in ("rewind", "reinit")])
    n = len(kind)
    steps = train.make_steps(apply_fn, optax.adam(args.lr))
    mask = jax.vmap(masks.ones)(theta0)
    rates = select.rates_by_pattern(funcs[0][1], {"out": 0.1}, default=0.2)
    keys = jax.random.split(jax.random.key(0), n)

    @jax.jit
    def next_level(w0, wf, m, k, use_reinit):
        def one(w0, wf, m, k, r):
            new = select.layerwise(criteria.score("large_final", w0, wf, mask=m), m, rates)
            p_rewind, _ = reset.reset(w0, new, kept="rewind", key=k)
            p_reinit, _ = reset.reset(w0, new, kept="reinit", key=k)
            return jax.tree.map(lambda a, b: jnp.where(r, b, a), p_rewind, p_reinit), new

        return jax.vmap(one)(w0, wf, m, k, use_reinit)

    params = masks.apply(theta0, mask)
    print(
        f"{'level':>5} {'density':>8} {'ticket acc':>11} {'reinit acc':>11} {'early-stop it':>13}"
    )
    start = time.time()
    for level in range(args.rounds + 1):
        state, hist = train.fit(
            steps,
            jax.vmap(steps.init)(params),
            mask,
            ds.train,
            ds.val,
            ds.test,
            iterations=args.iterations,
            batch_size=args.batch_size,
            eval_every=max(args.iterations // 10, 1),
            data_key=jax.random.key(1),
            tickets=True,
            desc=f"level {level}",
        )
        dens = float(masks.density(masks.prunable_leaves(train.unstack(mask)[0])))
        acc = hist.early_stop_test_acc
        print(
            f"{level:>5} {dens:>8.3f} {acc[kind == 'rewind'].mean():>11.4f} "
            f"{acc[kind == 'reinit'].mean():>11.4f} {hist.early_stop_iteration.mean():>13.0f}",
            flush=True,
        )
        if level < args.rounds:
            level_keys = jax.vmap(lambda k, i=level: jax.random.fold_in(k, i))(keys)
            params, mask = next_level(
                theta0, state.params, mask, level_keys, jnp.asarray(kind == "reinit")
            )
    print(f"done in {time.time() - start:.0f} s ({n} tickets per level)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
