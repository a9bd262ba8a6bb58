"""Latency tables: a real ort-cpu profile, load/save, prediction, correction, bad files, validate."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, TINY_RES
from hwnas.arch import SPACES, Arch
from hwnas.backends import TimingConfig
from hwnas.errors import HwnasError
from hwnas.latency import FORMAT, Correction, LatencyTable, profile
from hwnas.units import Unit

TINY = SPACES["tiny"].with_resolutions((TINY_RES,))


@pytest.fixture(scope="module")
def table(tiny_table_file) -> LatencyTable:
    return LatencyTable.load(tiny_table_file)


# ------------------------------------------------------------------------------ profile + io
def test_profile_has_every_unit(table: LatencyTable, ort_cpu) -> None:
    want = {u.key(): u for u in TINY.all_units(80)}
    assert set(table.entries) == set(want)
    assert all(table.units[k] == u for k, u in want.items())
    assert all(lat.median_ms > 0 and lat.spread_ms >= 0 and lat.n >= 2 for lat in table.entries.values())
    assert table.space == "tiny" and table.resolutions == (TINY_RES,) and table.num_classes == 80
    assert table.timing == FAST
    assert table.target == ort_cpu.target()
    table.check_target(ort_cpu.target())  # same machine: no complaint


def test_table_file_format(tiny_table_file: Path) -> None:
    d = json.loads(tiny_table_file.read_text())
    assert d["format"] == FORMAT
    assert d["target"]["backend"] == "ort-cpu"
    e = next(iter(d["entries"].values()))
    assert set(e) >= {"median_ms", "spread_ms", "n", "unit"}


def test_load_save_round_trip(table: LatencyTable, tmp_path: Path) -> None:
    p = tmp_path / "again.json"
    table.save(p)
    back = LatencyTable.load(p)
    assert back.to_dict() == table.to_dict()
    assert back.entries == table.entries and back.units == table.units and back.target == table.target
    back.correction = Correction(1.1, 0.2, 0.003, 5, 7)
    back.save(p)
    assert LatencyTable.load(p).correction == Correction(1.1, 0.2, 0.003, 5, 7)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files behind


def test_profile_resumes_without_retiming(table_copy: Path, ort_cpu) -> None:
    before = table_copy.read_bytes()
    t0 = time.perf_counter()
    again = profile(ort_cpu, table_copy, space="tiny", resolutions=(TINY_RES,), timing=FAST)
    assert time.perf_counter() - t0 < 5  # nothing left to time
    assert len(again.entries) == len(TINY.all_units(80))
    assert json.loads(table_copy.read_bytes())["entries"] == json.loads(before)["entries"]


def test_profile_explicit_units_and_progress(tmp_path: Path, ort_cpu) -> None:
    units = TINY.all_units(80)[:3]
    calls = []
    t = profile(ort_cpu, tmp_path / "t.json", space="tiny", resolutions=(TINY_RES,), units=units,
                timing=FAST, progress=lambda d, n, k: calls.append((d, n, k)))
    assert set(t.entries) == {u.key() for u in units}
    assert calls[0][:2] == (0, 3) and calls[-1] == (3, 3, "done")


def test_profile_refuses_another_space(table_copy: Path, ort_cpu) -> None:
    before = table_copy.read_bytes()
    with pytest.raises(HwnasError, match="holds space 'tiny'"):
        profile(ort_cpu, table_copy, space="default", resolutions=(TINY_RES,), timing=FAST)
    assert table_copy.read_bytes() == before


# ------------------------------------------------------------------------------ prediction
def test_predict_is_the_sum_of_unit_medians(table: LatencyTable) -> None:
    for seed in range(30):
        a = TINY.sample(seed)
        pred = table.predict(a)
        placed = a.placed_units(80)
        expect = sum(table.entries[p.unit.key()].median_ms for p in placed)
        assert pred.raw_ms == pytest.approx(expect, rel=1e-12)
        assert pred.latency_ms == pred.raw_ms  # no correction yet
        assert pred.n_units == len(placed)
        assert sum(pred.breakdown_ms.values()) == pytest.approx(pred.raw_ms, rel=1e-9)
        assert {"stem", "stage1", "head"} <= set(pred.breakdown_ms)
        assert set(pred.breakdown_ms) <= {"stem", "neck", "head"} | {f"stage{i}" for i in range(1, 6)}
        assert ("neck" in pred.breakdown_ms) == (a.neck != "none")
        assert pred.spread_ms >= 0
        assert table.predict(str(a)) == pred  # a string works too


def test_predict_with_correction(table: LatencyTable) -> None:
    t = table
    a = TINY.sample(3)
    raw = t.predict(a)
    t2 = LatencyTable(t.target, t.space, t.resolutions, t.num_classes, t.timing, dict(t.entries), dict(t.units),
                      correction=Correction(1.5, 0.25, 0.01))
    p = t2.predict(a)
    assert p.raw_ms == raw.raw_ms
    assert p.latency_ms == pytest.approx(1.5 * raw.raw_ms + 0.25 + 0.01 * raw.n_units)


def test_prediction_is_fast(table: LatencyTable) -> None:
    archs = [TINY.sample(s) for s in range(200)]
    table.predict(archs[0])
    t0 = time.perf_counter()
    for a in archs:
        table.predict(a)
    per_arch_ms = (time.perf_counter() - t0) * 1e3 / len(archs)
    assert per_arch_ms < 1.0, per_arch_ms


def test_lookup_of_a_missing_unit_names_the_key(table: LatencyTable) -> None:
    u = Unit("conv", 3, 40, (64, 64), 3, 2, "bn", "relu")
    with pytest.raises(HwnasError) as info:
        table.lookup(u)
    assert u.key() in str(info.value) and "hwnas profile" in str(info.value)
    # an arch at another resolution is missing units: the error names one of them
    with pytest.raises(HwnasError, match=r"conv\[cin=3,cout=\d+,hw=128x128"):
        table.predict(SPACES["tiny"].sample(0))


# ------------------------------------------------------------------------------ correction
def test_correction_fit_recovers_coefficients() -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(1, 50, 40)
    n = rng.integers(20, 200, 40)
    meas = 1.3 * raw + 0.7 + 0.02 * n
    c = Correction.fit(raw, n, meas, seed=5)
    assert (c.scale, c.offset_ms, c.per_unit_ms) == pytest.approx((1.3, 0.7, 0.02), rel=1e-6)
    assert c.n == 40 and c.seed == 5
    assert c.apply(10.0, 100) == pytest.approx(1.3 * 10 + 0.7 + 2.0)
    assert Correction.from_dict(c.to_dict()) == c
    # with noise the fit is still close
    noisy = meas * rng.normal(1, 0.01, 40)
    c2 = Correction.fit(raw, n, noisy)
    pred = np.array([c2.apply(r, k) for r, k in zip(raw, n)])
    assert np.median(np.abs(pred - meas) / meas) < 0.02


def test_correction_needs_four_points() -> None:
    with pytest.raises(HwnasError, match="at least 4 measured detectors, got 3"):
        Correction.fit([1, 2, 3], [10, 20, 30], [1, 2, 3])


# ------------------------------------------------------------------------------ bad files
def _load_error(path: Path) -> str:
    with pytest.raises(HwnasError) as info:
        LatencyTable.load(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in _load_error(tmp_path / "nope.json")


def test_corrupt_json(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    p.write_text('{"format": "hwnas-latency-table/1", "entries": {,}')
    assert "corrupt or truncated" in _load_error(p)


def test_truncated_file(table_copy: Path) -> None:
    data = table_copy.read_bytes()
    table_copy.write_bytes(data[: len(data) // 2])
    assert "corrupt or truncated" in _load_error(table_copy)


def test_binary_garbage(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    p.write_bytes(b"\xff\xfe\x00garbage")
    assert "corrupt or truncated" in _load_error(p)


@pytest.mark.parametrize("content", ['[1, 2, 3]', '"a string"', '{"format": "something-else/2"}', '{}', 'null'])
def test_not_a_table(tmp_path: Path, content: str) -> None:
    p = tmp_path / "t.json"
    p.write_text(content)
    assert "is not an hwnas latency table" in _load_error(p)


@pytest.mark.parametrize("edit", ["drop_entries", "bad_median", "bad_unit", "bad_target", "entries_list"])
def test_malformed_table(table_copy: Path, edit: str) -> None:
    d = json.loads(table_copy.read_text())
    k = next(iter(d["entries"]))
    if edit == "drop_entries":
        del d["entries"]
    elif edit == "bad_median":
        d["entries"][k]["median_ms"] = "fast"
    elif edit == "bad_unit":
        d["entries"][k]["unit"]["kind"] = "warp"
    elif edit == "bad_target":
        del d["target"]["device"]
    else:
        d["entries"] = [1, 2]
    table_copy.write_text(json.dumps(d))
    with pytest.raises(HwnasError) as info:
        LatencyTable.load(table_copy)
    assert "\n" not in str(info.value)


def test_table_of_another_target(table_copy: Path, ort_cpu) -> None:
    d = json.loads(table_copy.read_text())
    d["target"]["device"] = "Imaginary CPU 9000"
    table_copy.write_text(json.dumps(d))
    t = LatencyTable.load(table_copy)  # loading (for prediction) is fine
    with pytest.raises(HwnasError) as info:
        t.check_target(ort_cpu.target(), path=str(table_copy))
    msg = str(info.value)
    assert "Imaginary CPU 9000" in msg and "device" in msg and "--force" in msg
    t.check_target(ort_cpu.target(), force=True, path=str(table_copy))
    # and profile refuses to resume into it, leaving it untouched
    before = table_copy.read_bytes()
    with pytest.raises(HwnasError, match="another target"):
        profile(ort_cpu, table_copy, space="tiny", resolutions=(TINY_RES,), timing=FAST)
    assert table_copy.read_bytes() == before


def test_library_versions_do_not_make_another_target(table_copy: Path, ort_cpu) -> None:
    d = json.loads(table_copy.read_text())
    d["target"]["libraries"]["numpy"] = "0.0.1"
    table_copy.write_text(json.dumps(d))
    LatencyTable.load(table_copy).check_target(ort_cpu.target())


# ------------------------------------------------------------------------------ validate
@pytest.mark.slow
def test_validate_real_run(table_copy: Path, ort_cpu, tmp_path: Path) -> None:
    from hwnas.validate import validate

    out = tmp_path / "report.json"
    t = LatencyTable.load(table_copy)
    calls = []
    rep = validate(t, table_copy, ort_cpu, out, samples=6, calib_samples=5, baseline_samples=1, seed=0,
                   timing=TimingConfig(warmup=2, min_repeats=5, max_repeats=300, min_time_s=0.02),
                   progress=lambda d, n, k: calls.append((d, n)))
    assert calls[-1] == (11, 11)
    for key in ("within_5", "within_10", "mape", "spearman", "kendall", "noise_cv", "raw", "naive", "correction"):
        assert key in rep, key
    assert rep["samples"] == 6 and rep["calib_samples"] == 5 and rep["complete"] is True
    assert 0 <= rep["within_5"] <= rep["within_10"] <= 1
    assert rep["mape"] >= 0 and -1 <= rep["spearman"] <= 1 and -1 <= rep["kendall"] <= 1
    assert rep["noise_cv"] >= 0
    assert rep["naive"]["n"] == 1 and rep["raw"]["n"] == 6
    assert len(rep["eval"]) == 6 and len(rep["records"]) == 11
    # the unit sum tracks real whole-detector latency at least in rank
    assert rep["raw"]["spearman"] > 0
    on_disk = json.loads(out.read_text())
    assert on_disk["complete"] is True and on_disk["within_10"] == rep["within_10"]
    # the correction is stored in the table (only when it beats the plain sum on held-out
    # calibration detectors) and used by predict
    stored = LatencyTable.load(table_copy)
    chk = rep["correction_check"]
    assert chk["kept"] == (chk["calib_loo_mape"] < 0.9 * chk["calib_raw_mape"])
    if chk["kept"]:
        assert stored.correction.to_dict() == rep["correction"] and stored.correction.n == 5
    else:
        assert stored.correction is None
    assert stored.ops  # per-operator baseline timings are cached in the table
    a = Arch.parse(rep["eval"][0]["arch"])
    assert stored.predict(a).latency_ms == pytest.approx(rep["eval"][0]["predicted_ms"])

    # rerunning resumes from the report: no detector is measured again
    t0 = time.perf_counter()
    rep2 = validate(LatencyTable.load(table_copy), table_copy, ort_cpu, out, samples=6, calib_samples=5,
                    baseline_samples=1, seed=0)
    assert time.perf_counter() - t0 < 3
    assert rep2["records"] == rep["records"]
