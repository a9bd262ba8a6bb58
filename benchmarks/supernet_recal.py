"""Which images should recalibrate a path's BatchNorm? A trained supernet's paths (the detectors of a
truth set) scored after recalibration on 8 batches of training images letterboxed as for evaluation
(what the supernet evaluator does) and on 8 batches through the training transform (augmented, as
the weights were trained), with the Kendall tau of each against the truth.

    python benchmarks/supernet_recal.py runs/bench/fidelity/supernet-12-uniform-structure/supernets/\
i128-basic-fpn_p3-5-retina-bn structure benchmarks/results/truth-hood-i128-basic-fpn_p3-5-retina-bn.json
"""
import sys, json, random
from pathlib import Path
import torch
from hwnas.search.supernet import Neighbourhood, Supernet, calibration_images, recalibrate_bn
from hwnas.spec.arch import Arch
from hwnas.spec.space import get_space
from hwnas.train.recipes import recipe_config
from hwnas.train.loop import train_transform
from hwnas.data.transforms import EvalTransform, collate, normalize
from hwnas.data.wider import open_dataset
from hwnas.evaluate.coco import evaluate
from scipy.stats import kendalltau
folder, span, truth_path = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = json.loads(Path(truth_path).read_text())["rows"]
archs = [Arch.parse(r["arch"]) for r in rows]
data = Path("runs/bench/truth/data")
hood = Neighbourhood.of(get_space("small").with_resolutions((128,)), archs[0], span)
net = Supernet(hood, 3); net.load_state_dict(torch.load(folder / "supernet.pt", weights_only=True)["tensors"])
cfg = recipe_config("", epochs=12, batch_size=16, lr=2e-3, seed=0)
ds = open_dataset(data, "train", train_transform(hood.largest(), cfg)); ds.set_epoch(0)
idx = random.Random(0).sample(range(len(ds)), 8 * 16)
aug = [normalize(collate([ds[j] for j in idx[i:i + 16]])[0]) for i in range(0, len(idx), 16)]
plain = calibration_images(data, archs[0].input_hw, 8, 16, 0, "cpu")
val = open_dataset(data, "val", EvalTransform(archs[0].input_hw))
res = {"plain": [], "aug": []}
for a in archs:
    for name, b in (("plain", plain), ("aug", aug)):
        m = net.extract(a); recalibrate_bn(m, b); res[name].append(evaluate(m, a, val)["map"])
    print(a, round(res["plain"][-1], 4), round(res["aug"][-1], 4), flush=True)
t = [r["map"] for r in rows]
for n, v in res.items():
    print(n, "tau", round(kendalltau(v, t).statistic, 3))
