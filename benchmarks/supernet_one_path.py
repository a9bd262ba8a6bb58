"""Is the supernet's training exact? A supernet whose neighbourhood holds ONE path, trained like any
supernet, then scored with inherited weights (BatchNorm recalibrated, and as trained), against the
same arch trained standalone by `hwnas train` (the truth set's first detector: mAP 0.0871 at 12
epochs, seed 0, on the truth set's data).

    python benchmarks/supernet_one_path.py 12 runs/bench/supernet_one_path
"""
import sys
from dataclasses import replace
from pathlib import Path

from hwnas.data.transforms import EvalTransform
from hwnas.data.wider import open_dataset
from hwnas.evaluate.coco import evaluate
from hwnas.search.supernet import Neighbourhood, SupernetConfig, calibration_images, score_path, train_supernet
from hwnas.spec.space import get_space
from hwnas.train.recipes import recipe_config

epochs = int(sys.argv[1]); out = Path(sys.argv[2])
sp = get_space("small")
one = replace(sp, resolutions=(128,), blocks=("basic",), widths=(16,), max_blocks=(1, 1, 1, 1), necks=("fpn",),
              level_ranges=((3, 5),), neck_widths=(32,), heads=("retina",), head_depths=(1,), head_widths=(32,))
hood = Neighbourhood(one, "structure")
print(hood.sample(0), hood.largest(), hood.smallest())  # one path: the three are the same detector
data = Path("runs/bench/truth/data")
cfg = recipe_config("", epochs=epochs, batch_size=16, lr=2e-3, seed=0)
net, info = train_supernet(hood, data, out, cfg, SupernetConfig(epochs=epochs))
print("losses", [round(h["loss"], 3) for h in info["history"]])
arch = hood.sample(0)
calib = calibration_images(data, arch.input_hw, 8, 16, 0, "cpu")
val = open_dataset(data, "val", EvalTransform(arch.input_hw))
m = score_path(net, arch, calib, val, "cpu")
print("inherited+recal map", m["map"], m["map50"])
print("inherited, no recal (stats as trained)", evaluate(net.extract(arch).eval(), arch, val)["map"])
