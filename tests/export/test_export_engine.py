"""Engine files with a manifest: real TensorRT-RTX builds ahead of time (no GPU), the manifest
format, and every way check_engine / load_engine refuse an engine they must not load."""
from __future__ import annotations

import importlib.util
import io
import json
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import hwnas.backends.tensorrt as trt_backend
from hwnas.spec.arch import Arch
from hwnas.data.transforms import MEAN, STD, normalize
from hwnas.errors import HwnasError
from hwnas.export.engine import build_engine_file, check_engine, load_engine
from hwnas.export.manifest import (
    FLAVOURS,
    FORMAT,
    FORMS,
    PRECISIONS,
    ROI_IMPLS,
    BuildOptions,
    EngineManifest,
    InputSpec,
    TensorSpec,
    read_manifest,
    write_manifest,
)
from hwnas.heads.postprocess import decode_outputs
from hwnas.models.detector import Detector
from hwnas.backends.onnx_export import to_onnx

from conftest import HAS_RTX, needs_rtx

if HAS_RTX:
    import tensorrt_rtx
HAS_TRT = importlib.util.find_spec("tensorrt") is not None

ARCH = "i64/basic_c16_1-21/none/retina_d1_c32/bn"  # a whole retina detector, ~1 s to build
CLASSES = ["person", "car", "dog"]
FIELDS = {"arch": ARCH, "class_names": CLASSES, "input": {"mean": list(MEAN), "std": list(STD)},
          "form": "host", "roi_impl": None, "precision": "fp32"}


class HostForm(torch.nn.Module):
    """images [B, 3, H, W] RGB in [0, 1] -> decoded boxes and scores, NMS left to the host."""

    def __init__(self, det: Detector) -> None:
        super().__init__()
        self.det = det

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_outputs(self.det(normalize(images)), self.det.arch, self.det.num_classes)


@pytest.fixture(scope="module")
def model() -> HostForm:
    torch.manual_seed(0)
    return HostForm(Detector.from_arch(Arch.parse(ARCH), len(CLASSES))).eval()


@pytest.fixture(scope="module")
def onnx_static(model) -> bytes:
    return to_onnx(model, (torch.rand(1, 3, 64, 64),), input_names=["images"], output_names=["boxes", "scores"])


@pytest.fixture(scope="module")
def onnx_dynamic(model) -> bytes:
    # to_onnx exports static shapes; a dynamic batch axis named "batch" as the deploy export has.
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(2, 3, 64, 64),), buf, dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["boxes", "scores"],
                          dynamic_axes={n: {0: "batch"} for n in ("images", "boxes", "scores")})
    return buf.getvalue()


def _one_line(e: pytest.ExceptionInfo, *words: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


@pytest.fixture(scope="module")
def built(tmp_path_factory, onnx_static) -> Path:
    """One good RTX engine + manifest; tests copy it before damaging anything."""
    if not HAS_RTX:
        pytest.skip("tensorrt_rtx is not installed")
    out = tmp_path_factory.mktemp("engines") / "retina.engine"
    build_engine_file(onnx_static, out, FIELDS, flavour="tensorrt-rtx", sm="80")
    return out


@pytest.fixture
def pair(built, tmp_path) -> Path:
    eng = tmp_path / built.name
    eng.write_bytes(built.read_bytes())
    eng.with_suffix(".json").write_text(built.with_suffix(".json").read_text())
    return eng


def _edit_manifest(engine: Path, **changes) -> None:
    path = engine.with_suffix(".json")
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


# ------------------------------------------------------------------ the manifest alone (no TensorRT)
def _manifest(**kw) -> EngineManifest:
    base = dict(
        arch=ARCH, class_names=tuple(CLASSES),
        input=InputSpec(shape=("batch", 3, 64, 64), mean=MEAN, std=STD),
        outputs=(TensorSpec("boxes", ("batch", 576, 4), "float32"), TensorSpec("scores", ("batch", 576, 3), "float32")),
        form="host", roi_impl=None, precision="int8", int8_target="tensorrt", flavour="tensorrt-rtx",
        library_version="1.7.1.116", sm="89",
        build=BuildOptions(batch=None, dynamic_batch=(1, 2, 8), workspace_mb=512, opt_level=3, timing_cache="t.cache"),
        onnx_sha256="0" * 64, engine_sha256="f" * 64, engine_bytes=1234, build_s=1.5,
        created="2026-11-24T04:00:00+00:00", hwnas_version="0.1.0")
    return EngineManifest(**{**base, **kw})


def test_manifest_round_trips(tmp_path) -> None:
    m = _manifest()
    d = m.to_dict()
    assert d["format"] == FORMAT and list(d)[0] == "format"
    assert d["build"]["dynamic_batch"] == {"min": 1, "opt": 2, "max": 8}
    assert EngineManifest.from_dict(json.loads(json.dumps(d))) == m
    write_manifest(tmp_path / "a.json", m)
    assert read_manifest(tmp_path / "a.json") == m
    assert not list(tmp_path.glob("*.tmp"))


def test_manifest_rejects_bad_fields() -> None:
    with pytest.raises(HwnasError, match="int8_target"):
        _manifest(precision="fp16")  # int8_target without int8
    with pytest.raises(HwnasError, match="form"):
        _manifest(form="plugin")
    with pytest.raises(HwnasError, match="flavour"):
        _manifest(flavour="openvino")
    with pytest.raises(HwnasError, match="dynamic_batch"):
        BuildOptions.from_dict({**BuildOptions().to_dict(), "dynamic_batch": {"min": 4, "opt": 2, "max": 8}})


def test_manifest_choices_are_their_sources() -> None:
    """The manifest reads its choices from their one (torch-free) home, the lists the export uses."""
    from hwnas.export.deploy import NMS_FORMS
    from hwnas.export.pipeline import PRECISIONS as EXPORT_PRECISIONS
    from hwnas.heads.rcnn import ROI_IMPLS as RCNN_ROI_IMPLS

    assert ROI_IMPLS is RCNN_ROI_IMPLS and FORMS is NMS_FORMS
    assert PRECISIONS is EXPORT_PRECISIONS and FLAVOURS == (*trt_backend.FLAVOURS, "onnx")


@pytest.mark.parametrize("content,words", [
    (None, ("does not exist", "rebuild")),
    ('{"format": "hwnas-engine/1", "arch": ', ("corrupt", "rebuild")),
    ("\x00\x01binary", ("corrupt",)),
    ('{"hello": "world"}', ("not an hwnas engine manifest",)),
    ('[1, 2, 3]', ("not an hwnas engine manifest",)),
    ('{"format": "hwnas-engine/2"}', ("hwnas-engine/2", "another hwnas version")),
    ('{"format": "hwnas-engine/1", "arch": "x"}', ("incomplete",)),
])
def test_read_manifest_rejects(tmp_path, content, words) -> None:
    path = tmp_path / "m.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(HwnasError) as e:
        read_manifest(path)
    _one_line(e, str(path), *words)


def test_read_manifest_names_a_missing_field(tmp_path) -> None:
    d = _manifest().to_dict()
    del d["engine_sha256"]
    (tmp_path / "m.json").write_text(json.dumps(d))
    with pytest.raises(HwnasError) as e:
        read_manifest(tmp_path / "m.json")
    _one_line(e, "incomplete", "engine_sha256")


# ------------------------------------------------------------------ the onnx flavour (runs here, on the CPU)
def test_onnx_flavour_builds_checks_loads_and_runs(tmp_path, model, onnx_dynamic) -> None:
    out = tmp_path / "retina.onnx"
    m = build_engine_file(onnx_dynamic, out, FIELDS, flavour="onnx", batch_profile=(1, 2, 4))
    assert out.read_bytes() == onnx_dynamic
    assert m.build.dynamic_batch == (1, 2, 4) and m.build.batch is None and m.input.shape[0] == "batch"
    assert m.sm is None and m.engine_sha256 == m.onnx_sha256
    runner = load_engine(out)
    assert runner.batch == 2  # the profile's opt
    x = torch.rand(3, 3, 64, 64)
    got = runner(x.numpy())
    with torch.no_grad():
        boxes, scores = model(x)
    np.testing.assert_allclose(got["boxes"], boxes.numpy(), atol=1e-3)
    np.testing.assert_allclose(got["scores"], scores.numpy(), atol=1e-4)
    with pytest.raises(HwnasError, match="drop sm"):
        build_engine_file(onnx_dynamic, tmp_path / "x.onnx", FIELDS, flavour="onnx", sm="80", batch_profile=(1, 1, 1))
    with pytest.raises(HwnasError, match="drop opt_level"):  # 0 is an option given, not "none"
        build_engine_file(onnx_dynamic, tmp_path / "x.onnx", FIELDS, flavour="onnx", opt_level=0, batch_profile=(1, 1, 1))


def test_build_engine_file_refuses_bad_requests_before_writing(tmp_path, onnx_static, onnx_dynamic) -> None:
    out = tmp_path / "e.engine"
    cases = [
        (dict(onnx_bytes=onnx_static, fields={**FIELDS, "engine_sha256": "x"}), "records itself"),
        (dict(onnx_bytes=onnx_static, fields={k: v for k, v in FIELDS.items() if k != "input"}), "input"),
        (dict(onnx_bytes=onnx_static, fields={**FIELDS, "form": "bogus"}), "form"),
        (dict(onnx_bytes=onnx_dynamic, fields=FIELDS), "batch_profile"),
        (dict(onnx_bytes=onnx_static, fields=FIELDS, batch_profile=(1, 2, 4)), "fixed shape"),
        (dict(onnx_bytes=onnx_dynamic, fields=FIELDS, batch_profile=(4, 2, 1)), "min <= opt <= max"),
    ]
    for kw, words in cases:
        with pytest.raises(HwnasError) as e:
            build_engine_file(kw["onnx_bytes"], out, kw["fields"], flavour="onnx", batch_profile=kw.get("batch_profile"))
        _one_line(e, words)
    with pytest.raises(HwnasError, match=".json"):
        build_engine_file(onnx_static, tmp_path / "e.json", FIELDS, flavour="onnx")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ TensorRT-RTX builds (no GPU needed)
@pytest.mark.parametrize("sm", ["80", "89"])
@pytest.mark.trt
@needs_rtx
def test_rtx_engine_file_is_the_raw_plan(tmp_path, monkeypatch, onnx_static, sm) -> None:
    plans = []
    real = trt_backend.build_engine

    def spy(*args, **kwargs):
        plans.append(real(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(trt_backend, "build_engine", spy)
    out = tmp_path / "retina.engine"
    m = build_engine_file(onnx_static, out, FIELDS, flavour="tensorrt-rtx", sm=f"sm_{sm}", workspace_mb=256, opt_level=2)
    assert out.read_bytes() == plans[0]  # raw plan: no header of ours
    from engine_checks import check_plan, network_io

    assert network_io(onnx_static) == ([("images", (1, 3, 64, 64), "FLOAT")], ["boxes", "scores"])
    check_plan(plans[0], onnx_static)  # names images, boxes and scores, holds the weights
    assert m.sm == sm and m.flavour == "tensorrt-rtx" and m.library_version == tensorrt_rtx.__version__
    assert m.engine_bytes == len(plans[0]) and m.build.batch == 1 and m.build.dynamic_batch is None
    assert m.build.workspace_mb == 256 and m.build.opt_level == 2
    assert [o.name for o in m.outputs] == ["boxes", "scores"] and m.input.name == "images"
    assert m.input.shape == (1, 3, 64, 64) and m.input.mean == MEAN and m.class_names == tuple(CLASSES)
    assert m.created.endswith("+00:00") and m.build_s > 0
    assert read_manifest(out.with_suffix(".json")) == m
    assert check_engine(out) == m
    assert sorted(p.name for p in tmp_path.iterdir()) == ["retina.engine", "retina.json"]


@pytest.mark.trt
@needs_rtx
def test_rtx_dynamic_batch_profile(tmp_path, onnx_dynamic) -> None:
    m = build_engine_file(onnx_dynamic, tmp_path / "dyn.engine", FIELDS, sm="86", batch_profile=(1, 4, 8))
    assert m.build.dynamic_batch == (1, 4, 8) and m.build.batch is None
    assert m.input.shape == ("batch", 3, 64, 64) and m.outputs[0].shape[0] == "batch"
    check_engine(tmp_path / "dyn.engine")
    with pytest.raises(HwnasError, match="batch_profile"):  # build_engine itself says so too
        trt_backend.build_engine(onnx_dynamic, flavour="tensorrt-rtx", sm="86")


@pytest.mark.trt
@needs_rtx
def test_rtx_timing_cache_saved_and_reused(tmp_path, onnx_static) -> None:
    """On TensorRT-RTX the timing cache is a documented no-op (it tunes at load time on the GPU):
    the file is still written and read back, so one command line serves both flavours."""
    cache = tmp_path / "cache" / "timing.cache"
    t0 = time.perf_counter()
    first = build_engine_file(onnx_static, tmp_path / "a.engine", FIELDS, sm="80", timing_cache=cache)
    t1 = time.perf_counter()
    from engine_checks import empty_timing_cache

    # what TensorRT-RTX serializes for its (no-op, so empty) timing cache, not some other bytes
    assert cache.read_bytes() == empty_timing_cache()
    again = build_engine_file(onnx_static, tmp_path / "b.engine", FIELDS, sm="80", timing_cache=cache)
    t2 = time.perf_counter()
    assert again.build.timing_cache == str(cache) and first.build.timing_cache == str(cache)
    assert check_engine(tmp_path / "b.engine") == again
    assert cache.read_bytes() == empty_timing_cache()  # read back and written again
    print(f"rtx build {first.build_s:.2f} s ({t1 - t0:.2f} s with I/O), rebuild with cache "
          f"{again.build_s:.2f} s ({t2 - t1:.2f} s), cache {cache.stat().st_size} bytes")


@pytest.mark.trt
@needs_rtx
def test_failed_build_writes_nothing_and_keeps_the_old_pair(pair, monkeypatch, onnx_static) -> None:
    before = (pair.read_bytes(), pair.with_suffix(".json").read_text())

    def fail(*args, **kwargs):
        raise HwnasError("tensorrt-rtx engine build failed: simulated")

    monkeypatch.setattr(trt_backend, "build_engine", fail)
    with pytest.raises(HwnasError, match="simulated"):
        build_engine_file(onnx_static, pair, FIELDS, sm="80")
    assert (pair.read_bytes(), pair.with_suffix(".json").read_text()) == before
    assert sorted(p.name for p in pair.parent.iterdir()) == ["retina.engine", "retina.json"]
    with pytest.raises(HwnasError):  # a build that cannot even start (sm_90 is not offered)
        build_engine_file(onnx_static, pair.parent / "new.engine", FIELDS, sm="90")
    assert not (pair.parent / "new.engine").exists() and not (pair.parent / "new.json").exists()


@pytest.mark.trt
@needs_rtx
def test_bad_manifest_field_refused_before_the_build(tmp_path, onnx_static) -> None:
    """A bad form is said before the build: sm_90 (not offered) would fail the build with its own message."""
    with pytest.raises(HwnasError) as e:
        build_engine_file(onnx_static, tmp_path / "e.engine", {**FIELDS, "form": "plugin"}, sm="90")
    _one_line(e, "form", "plugin")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ check_engine refuses
@pytest.mark.trt
@needs_rtx
def test_truncated_engine(pair) -> None:
    pair.write_bytes(pair.read_bytes()[:-100])
    with pytest.raises(HwnasError) as e:
        check_engine(pair)
    _one_line(e, str(pair), "truncated", "rebuild")


@pytest.mark.trt
@needs_rtx
def test_flipped_bytes(pair) -> None:
    data = bytearray(pair.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pair.write_bytes(bytes(data))
    with pytest.raises(HwnasError) as e:
        check_engine(pair)
    _one_line(e, str(pair), "sha256", "corrupt or replaced")


@pytest.mark.trt
@needs_rtx
@pytest.mark.parametrize("damage,words", [
    ("missing", ("does not exist", "retina.json")),
    ("corrupt", ("corrupt", "retina.json")),
    ("foreign", ("not an hwnas engine manifest", "retina.json")),
    ("no engine", ("engine", "does not exist", "retina.engine")),
])
def test_missing_or_bad_manifest(pair, damage, words) -> None:
    man = pair.with_suffix(".json")
    if damage == "missing":
        man.unlink()
    elif damage == "corrupt":
        man.write_text(man.read_text()[:50])
    elif damage == "foreign":
        man.write_text(json.dumps({"version": 2, "entries": {}}))  # e.g. a latency table
    else:
        pair.unlink()
    with pytest.raises(HwnasError) as e:
        check_engine(pair)
    _one_line(e, *words)


@pytest.mark.trt
@needs_rtx
def test_other_library_version(pair) -> None:
    _edit_manifest(pair, library_version="1.6.0.12")
    with pytest.raises(HwnasError) as e:
        check_engine(pair)
    _one_line(e, "built with tensorrt-rtx 1.6.0.12 for sm_80", f"this machine has tensorrt-rtx {tensorrt_rtx.__version__}",
              "exact version")


@pytest.mark.trt
@needs_rtx
@pytest.mark.skipif(HAS_TRT, reason="full tensorrt is installed here")
def test_wrong_flavour(pair) -> None:
    _edit_manifest(pair, flavour="tensorrt")
    with pytest.raises(HwnasError) as e:
        check_engine(pair)
    _one_line(e, "built with tensorrt 1.7", "pip install 'hwnas[tensorrt]'")
    _edit_manifest(pair, flavour="tensorrt-llm")
    with pytest.raises(HwnasError) as e:
        check_engine(pair)
    _one_line(e, "flavour", "tensorrt-rtx")


@pytest.mark.trt
@needs_rtx
def test_other_gpu(pair, monkeypatch) -> None:
    """Where a GPU is present its compute capability must be the one the engine was built for."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 9))
    with pytest.raises(HwnasError) as e:
        check_engine(pair)
    _one_line(e, "built with tensorrt-rtx", "for sm_80", "this GPU is sm_89", "sm=89")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert check_engine(pair).sm == "80"


@pytest.mark.trt
@needs_rtx
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_load_engine_needs_a_gpu(pair) -> None:
    with pytest.raises(HwnasError) as e:
        load_engine(pair)
    _one_line(e, "passed its checks", "needs a CUDA GPU")
    with pytest.raises(HwnasError, match="built for batch 1"):
        load_engine(pair, batch=4)


@pytest.mark.trt
@needs_rtx
def test_load_engine_refuses_a_cpu_device(pair) -> None:
    with pytest.raises(HwnasError) as e:
        load_engine(pair, device="cpu")
    _one_line(e, "device 'cpu'", "tensorrt-rtx engine", "cuda:<index>")


def test_version_compatible_rule() -> None:
    from hwnas.export.engine import _version_ok

    assert _version_ok("10.3.0", "10.3.0", False) and not _version_ok("10.3.0", "10.4.0", False)
    assert _version_ok("10.3.0", "10.4.1", True) and not _version_ok("10.3.0", "10.2.0", True)
    assert not _version_ok("10.3.0", "11.0.0", True)


def test_manifest_replace_keeps_checks() -> None:
    with pytest.raises(HwnasError, match="engine_sha256"):
        replace(_manifest(), engine_sha256="not a hash")
