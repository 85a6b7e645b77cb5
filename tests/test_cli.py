"""The ``jaxprune`` command and what an installed wheel holds."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from jaxprune import cli

ROOT = Path(__file__).resolve().parents[1]


def test_list_names_every_study_with_its_first_doc_line(capsys):
    assert cli.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    studies = sorted(p.stem for p in (ROOT / "experiments").glob("[!_]*.py"))
    assert sorted(line.split()[0] for line in lines) == studies
    for line in lines:
        name = line.split()[0]
        first = (cli.study(name).__doc__ or "").strip().splitlines()[0]
        assert line.endswith(first), line


def test_a_study_runs_with_its_own_options_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["obd", "--levels", "-1", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "--levels must be an integer ≥ 0, got -1" in capsys.readouterr().err
    assert cli.main(["lottery"]) == 2
    assert "unknown study 'lottery'" in capsys.readouterr().err


def test_the_wheel_installs_only_jaxprune_with_the_studies_and_the_command(tmp_path):
    # ~5 s: build the wheel (no dependencies) from a copy (the build writes a build/ folder) and
    # read what it would install.
    src = tmp_path / "src"
    for folder in ("jaxprune", "experiments"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / file, src / file)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(src), "-w", str(tmp_path)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("jaxprune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {
        "jaxprune",
        wheel.name.split("-py")[0] + ".dist-info",
    }
    for study in cli.STUDIES:
        assert f"jaxprune/studies/{study}.py" in names
    meta = next(n for n in names if n.endswith("entry_points.txt"))
    assert "jaxprune = jaxprune.cli:main" in zipfile.ZipFile(wheel).read(meta).decode()
