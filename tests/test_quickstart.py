"""The `make run` job end to end on tiny settings, and its argument errors."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import quickstart


def test_quickstart_runs_and_prunes_to_the_paper_rates(capsys):
    assert quickstart.main(["--rounds", "2", "--iterations", "20", "--seeds", "1"]) == 0
    rows = [
        line.split() for line in capsys.readouterr().out.splitlines() if line[:5].strip().isdigit()
    ]
    assert [int(r[0]) for r in rows] == [0, 1, 2]
    # LeNet-300-100 on 8x8 digits: kernels 64x300 and 300x100 lose 20% of what remains per
    # round, the 100x10 output layer 10% (rounded half up), biases never.
    kept = {"fc1": 64 * 300, "fc2": 300 * 100, "out": 100 * 10}
    total = sum(kept.values())
    for row in rows:
        assert float(row[1]) == pytest.approx(sum(kept.values()) / total, abs=5e-4)
        kept = {
            k: v - int(np.floor((0.1 if k == "out" else 0.2) * v + 0.5)) for k, v in kept.items()
        }
        assert 0.0 <= float(row[2]) <= 1.0 and 0.0 <= float(row[3]) <= 1.0


@pytest.mark.parametrize("argv", [["--rounds", "-1"], ["--iterations", "0"], ["--lr", "0"]])
def test_quickstart_rejects_bad_settings(argv, capsys):
    with pytest.raises(SystemExit):
        quickstart.main(argv)
    assert argv[0] in capsys.readouterr().err
