"""The face preset through the command line, as a user runs it: training with the preset's recipe,
WIDER-style evaluation of a checkpoint (single and multi-scale), of a multi-scale graph and of
prediction files alone, a face search, and the bad input of these commands. Real files, real
training (one epoch on 64 px generated faces), real onnxruntime."""
from __future__ import annotations

import json
import pytest

from hwnas.cli.app import main

from cli_checks import assert_one_error, fill
from conftest import FAST

FACE = "i64/mbconv_c16_1-2-2-2/fpn_p2-6_c16/face_d1_c16_stc2_str2_mo2/bn"
SCALES = "1,1f,2:-16"


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> dict:
    """Generated faces at 64 px and a face detector trained on them for three epochs (18 steps)."""
    from hwnas.data.synth import synth

    d = tmp_path_factory.mktemp("faces")
    synth("faces", 48, 8, 64, 0, d / "data")
    rc = main(["train", "--arch", FACE, "--data", str(d / "data"), "--out", str(d / "run"), "--epochs", "3",
               "--batch-size", "8", "--box-loss", "diou", "--das-p", "0.5"])
    assert rc == 0
    return {"dir": d, "data": d / "data", "ckpt": d / "run" / "last.pt"}


def test_train_with_the_preset_recipe_and_overrides(faces, tmp_path):
    assert main(["train", "--preset", "face-s", "--img-size", "64", "--data", str(faces["data"]), "--out",
                 str(tmp_path / "a"), "--epochs", "1", "--batch-size", "8", "--das-p", "0"]) == 0
    cfg = json.loads((tmp_path / "a" / "metrics.json").read_text())["config"]
    # the recipe's box loss and jitter, the command line's epochs, batch and DAS share
    assert cfg["box_loss"] == "diou" and cfg["scale_jitter"] == [0.3, 2.0]
    assert cfg["epochs"] == 1 and cfg["batch_size"] == 8 and cfg["das_p"] == 0.0
    done = json.loads((faces["ckpt"].parent / "metrics.json").read_text())
    assert done["config"]["das_p"] == 0.5 and done["arch"] == FACE


def test_wider_eval_writes_official_files_that_rescore_identically(faces, capfd):
    d = faces["dir"]
    assert main(["eval", "--weights", str(faces["ckpt"]), "--data", str(faces["data"]), "--protocol", "wider",
                 "--out", str(d / "w.json")]) == 0
    m = json.loads((d / "w.json").read_text())
    assert {"easy", "medium", "hard", "map", "map50"} <= set(m) and "derived from face height" in m["subsets"]
    assert m["n_detections"] > 0
    files = sorted((d / "w.predictions" / "synth").glob("*.txt"))
    assert len(files) == 8  # one per val image, in the official layout
    lines = files[0].read_text().splitlines()
    assert lines[0] == files[0].stem and int(lines[1]) == len(lines) - 2
    assert all(len(ln.split()) == 5 for ln in lines[2:])
    capfd.readouterr()
    # the same files scored alone against the dataset's ground truth: the same APs
    assert main(["eval", "--protocol", "wider", "--predictions", str(d / "w.predictions"), "--gt",
                 str(faces["data"] / "val.json"), "--out", str(d / "again.json")]) == 0
    again = json.loads((d / "again.json").read_text())
    for s in ("easy", "medium", "hard"):
        assert again[s] == pytest.approx(m[s], abs=1e-6)
    assert "easy=" in capfd.readouterr().out


def test_wider_eval_of_prediction_files_alone(faces, tmp_path):
    """Prediction files from another tool (here: the ground truth itself, as x y w h score) score
    AP 1 on every subset that has faces; dropping every other face halves recall."""
    from hwnas.data.wider import coco_to_wider
    from hwnas.evaluate.wider import write_predictions

    gt = coco_to_wider(faces["data"] / "val.json")
    perfect = {im.name: [[*b, 0.9] for b in im.boxes.tolist()] for im in gt}
    write_predictions(tmp_path / "perfect", perfect)
    assert main(["eval", "--protocol", "wider", "--predictions", str(tmp_path / "perfect"), "--gt",
                 str(faces["data"] / "val.json"), "--out", str(tmp_path / "p.json")]) == 0
    m = json.loads((tmp_path / "p.json").read_text())
    for s in ("easy", "medium", "hard"):
        assert m[s] == pytest.approx(1.0) or m["n_faces"][s] == 0
    assert m["n_faces"]["hard"] > 0 and m["hard"] == pytest.approx(1.0)


def test_train_and_score_on_the_wider_face_layout(faces, tmp_path):
    """The generated faces rewritten in the official WIDER FACE layout (gt txt and
    WIDER_<split>/images/<event>/), trained on and scored from there."""
    import shutil

    from hwnas.data.wider import coco_to_wider, gt_file, image_root, write_wider_gt

    root = tmp_path / "wider"
    for split in ("train", "val"):
        images = coco_to_wider(faces["data"] / f"{split}.json")
        write_wider_gt(gt_file(root, split), images)
        for im in images:
            dst = image_root(root, split) / im.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(faces["data"] / "images" / im.name.split("/", 1)[1], dst)
    assert main(["train", "--arch", FACE, "--data", str(root), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--batch-size", "8", "--das-p", "0.5"]) == 0
    assert main(["eval", "--weights", str(tmp_path / "run" / "last.pt"), "--data", str(root), "--protocol", "wider",
                 "--out", str(tmp_path / "w.json")]) == 0
    m = json.loads((tmp_path / "w.json").read_text())
    assert m["n_images"] == 8 and "derived from face height" in m["subsets"]
    assert len(list((tmp_path / "w.predictions" / "synth").glob("*.txt"))) == 8


def test_multiscale_checkpoint_and_graph_agree(faces, tmp_path):
    assert main(["eval", "--weights", str(faces["ckpt"]), "--data", str(faces["data"]), "--protocol", "wider",
                 "--test-scales", SCALES, "--out", str(tmp_path / "ms.json")]) == 0
    assert main(["export", "--weights", str(faces["ckpt"]), "--out", str(tmp_path / "ms"), "--test-scales", SCALES]) == 0
    assert main(["eval", "--model", str(tmp_path / "ms.onnx"), "--data", str(faces["data"]), "--protocol", "wider",
                 "--out", str(tmp_path / "graph.json")]) == 0
    eager = json.loads((tmp_path / "ms.json").read_text())
    graph = json.loads((tmp_path / "graph.json").read_text())
    assert eager["test_scales"] == SCALES and graph["kind"] == "onnx-multiscale"
    for s in ("easy", "medium", "hard", "map"):
        assert graph[s] == pytest.approx(eager[s], abs=2e-3)


def test_export_an_untrained_preset(tmp_path, capfd):
    """``hwnas export --preset`` builds what a preset costs before it is trained."""
    assert main(["export", "--preset", FACE, "--out", str(tmp_path / "f")]) == 0
    m = json.loads((tmp_path / "f.json").read_text())
    assert m["arch"] == FACE and m["class_names"] == ["face"] and m["flavour"] == "onnx"
    assert "untrained" in capfd.readouterr().err
    from hwnas.export.deploy import OnnxDetector

    import torch

    assert len(OnnxDetector(tmp_path / "f.onnx").detect(torch.rand(1, 3, 64, 64))) == 1


def test_search_of_the_face_space_trains_with_the_face_recipe(faces, tmp_path, ort_cpu):
    """``--space face`` searches the face space with the face-s recipe unless ``--recipe`` says
    otherwise (a real table of the face space at 64 px, two candidates of one epoch)."""
    from hwnas.latency.table import profile

    profile(ort_cpu, tmp_path / "t.json", space="face", resolutions=(64,), num_classes=1, timing=FAST)
    assert main(["search", "--space", "face", "--data", str(faces["data"]), "--table", str(tmp_path / "t.json"),
                 "--out", str(tmp_path / "s"), "--trials", "2", "--epochs-per-trial", "1", "--batch-size", "8",
                 "--threads", "1", "--no-measure"]) == 0
    s = json.loads((tmp_path / "s" / "search.json").read_text())
    archs = [t["arch"] for t in s["trials"] if t["state"] == "complete"]
    assert archs and all("/face_d" in a and "_stc3_str" in a and a.endswith("_mo3/bn") for a in archs)
    assert s["config"]["recipe"] == "face-s"


BAD = {
    "unknown eval protocol": (["eval", "--weights", "{ckpt}", "--data", "{data}", "--protocol", "xml", "--out", "{o}"], "--protocol"),
    "gt without predictions": (["eval", "--protocol", "wider", "--gt", "{data}/val.json", "--out", "{o}"], "--predictions DIR --gt FILE"),
    "predictions without wider": (["eval", "--weights", "{ckpt}", "--data", "{data}", "--predictions", "{d}/p", "--out", "{o}"], "--protocol wider"),
    "missing predictions folder": (["eval", "--protocol", "wider", "--predictions", "{d}/nope", "--gt", "{data}/val.json", "--out", "{o}"], "nope"),
    "test scales on a graph": (["eval", "--model", "{d}/x.onnx", "--data", "{data}", "--test-scales", "1", "--out", "{o}"], "--weights"),
    "bad test scales": (["eval", "--weights", "{ckpt}", "--data", "{data}", "--test-scales", "1,zz", "--out", "{o}"], "zz"),
    "das on a retina head": (["train", "--arch", "i64/basic_c8_1-2-2/fpn_p3-4_c16/retina_d1_c16/bn", "--data", "{data}",
                              "--das-p", "0.5", "--out", "{o}"], "face head"),
    "das out of range": (["train", "--arch", FACE, "--data", "{data}", "--das-p", "2", "--out", "{o}"], "--das-p"),
    "step thresholds reversed": (["train", "--arch", FACE, "--data", "{data}", "--step1-iou", "0.3,0.5", "--out", "{o}"], "--step1-iou"),
    "face head without tricks": (["train", "--arch", "i64/basic_c8_1-2-2-2/fpn_p2-6_c16/face_d1_c16/bn", "--data", "{data}",
                                  "--out", "{o}"], "names its tricks"),
    "unknown search recipe": (["search", "--recipe", "cars", "--space", "face", "--data", "{data}", "--table",
                               "{d}/t.json", "--out", "{o}"], "--recipe 'cars'"),
    "weights and preset": (["export", "--weights", "{ckpt}", "--preset", "face-s", "--out", "{o}"], "exactly one"),
    "preset with check": (["export", "--preset", "face-s", "--check", "{data}", "--out", "{o}"], "--check"),
    "num classes without preset": (["export", "--weights", "{ckpt}", "--num-classes", "2", "--out", "{o}"], "--num-classes"),
    "multi-scale export as fp16": (["export", "--weights", "{ckpt}", "--out", "{o}", "--test-scales", "1",
                                    "--precision", "fp16"], "--precision"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line(case, faces, tmp_path, capfd):
    argv, expect = BAD[case]
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    subs = {"{ckpt}": str(faces["ckpt"]), "{data}": str(faces["data"]), "{d}": str(tmp_path), "{o}": str(tmp_path / "out")}
    assert_one_error(capfd, fill(argv, subs), expect, tmp_path, tmp_path / "out")
