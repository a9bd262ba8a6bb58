"""``hwnas quickstart --fast``: the whole pipeline end to end at toy sizes, every printed figure
traceable to a file it wrote, and a rerun that resumes instead of redoing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwnas.cli.app import main


def _value_in(path: Path, value) -> bool:
    """Whether ``value`` appears in the json file ``path`` (anywhere in it)."""
    def walk(x):
        if isinstance(x, dict):
            return any(walk(v) for v in x.values())
        if isinstance(x, list):
            return any(walk(v) for v in x)
        return x == value
    return walk(json.loads(path.read_text()))


@pytest.mark.parametrize("recipe", [None, "face"])
def test_quickstart_fast_end_to_end(tmp_path, capfd, recipe):
    out = tmp_path / "qs"
    argv = ["quickstart", "--fast", "--out", str(out)] + (["--recipe", recipe] if recipe else [])
    assert main(argv) == 0
    printed = capfd.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    # every step was printed as the command that reruns it, and each one is a real hwnas command
    assert s["commands"] and all(f"$ {c}" in printed for c in s["commands"])
    assert any(c.startswith("hwnas search ") for c in s["commands"]) and any(" --precision int8 " in c for c in s["commands"])
    # every figure comes from a file the quickstart wrote, with that value in it
    for name, f in s["figures"].items():
        assert (out / f["file"]).is_file() and _value_in(out / f["file"], f["value"]), name
    assert (out / s["pareto_plot"]).read_bytes()[:4] == b"\x89PNG"
    assert (out / "engines" / "best.onnx").is_file() and (out / "engines" / "best-int8.onnx").is_file()
    if recipe == "face":
        assert "/face_d" in s["figures"]["arch"]["value"] and "WIDER hard AP" in printed
    # a rerun resumes: nothing is trained or exported again
    assert main(argv) == 0
    again = capfd.readouterr().out
    assert again.count("done already") >= 8  # data, two exports, two parity scores, three benchmarks
    assert json.loads((out / "summary.json").read_text())["figures"] == s["figures"]


def test_quickstart_refuses_an_unknown_recipe(tmp_path, capfd):
    assert main(["quickstart", "--recipe", "cars", "--out", str(tmp_path / "q")]) != 0
    err = capfd.readouterr().err
    assert err.startswith("error: ") and "cars" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "q").exists()
