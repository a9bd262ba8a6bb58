"""EMA of the weights (``--ema``) on real training: the averaged weights are what is scored and saved
for deployment, the raw ones are kept for a resume, and a resume cannot switch EMA on or off."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hwnas.data.coco import CocoDetection
from hwnas.data.transforms import EvalTransform
from hwnas.errors import HwnasError
from hwnas.evaluate.coco import evaluate
from hwnas.spec.arch import Arch
from hwnas.train.checkpoint import load_checkpoint, load_model
from hwnas.train.loop import TrainConfig, train

# GN: weight standardisation is a parametrisation, so the averaged module must be folded to deploy
ARCH = Arch.parse("i64/basic_c8_1-2-2/fpn_p3-4_c16/retina_d1_c16/gn")


@pytest.fixture(scope="module")
def data(tiny_shapes: Path) -> Path:
    return tiny_shapes



def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 8, "lr": 2e-3, **kw})


def _float_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point() and k in b)


def test_the_averaged_weights_are_scored_and_deployed(data, tmp_path):
    res = train(ARCH, data, tmp_path / "run", cfg(ema=0.9))
    ck = load_checkpoint(res.checkpoint)
    raw = {k: v for k, v in ck.train_state_dict.items() if ".parametrizations." not in k}
    # the deployable weights are not the raw ones: an average lags the last steps
    assert _float_diff({k: ck.state_dict[k] for k in raw}, raw) > 1e-4
    # what metrics.json reports is the score of the saved (averaged) detector
    model = load_model(res.checkpoint).model
    ds = CocoDetection.from_dir(data, "val", EvalTransform(ARCH.input_hw))
    again = evaluate(model, ARCH, ds)
    assert again["map"] == pytest.approx(json.loads((tmp_path / "run" / "metrics.json").read_text())["map"], abs=1e-6)


def test_a_decay_near_zero_follows_the_raw_weights(data, tmp_path):
    """EMA with (almost) no memory is the raw module: the average is taken of the right tensors."""
    ck = load_checkpoint(train(ARCH, data, tmp_path / "run", cfg(ema=1e-9)).checkpoint)
    model = load_model(tmp_path / "run" / "last.pt").model
    from hwnas.models import Detector
    from hwnas.train.loop import add_weight_standardization

    raw = Detector.from_arch(ARCH, 3)
    add_weight_standardization(raw)
    raw.load_state_dict(ck.train_state_dict)
    x = torch.rand(2, 3, *ARCH.input_hw)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), raw.eval()(x)):
            assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_resume_refuses_to_switch_ema(data, tmp_path):
    train(ARCH, data, tmp_path / "run", cfg(epochs=1, ema=0.9))
    with pytest.raises(HwnasError, match=r"\(ema: 0.9 in the run, 0.0 now\)"):
        train(ARCH, data, tmp_path / "run", cfg(epochs=2))
    train(ARCH, data, tmp_path / "plain", cfg(epochs=1))
    with pytest.raises(HwnasError, match=r"\(ema: 0.0 in the run, 0.9 now\)"):
        train(ARCH, data, tmp_path / "plain", cfg(epochs=2, ema=0.9))


@pytest.mark.parametrize("decay", [-0.1, 1.0, float("nan")])
def test_bad_decay_is_refused(decay):
    with pytest.raises(HwnasError, match="--ema"):
        cfg(ema=decay)
