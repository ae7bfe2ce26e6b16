"""A newcomer's messages (issue 26): suggestions by edit distance, every plan problem at once."""

from __future__ import annotations

import pytest

from segensemble.errors import CheckpointError, PlanError
from segensemble.plan import parse_plan


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "a.pth").write_bytes(b"")
    return tmp_path


def test_an_unknown_member_field_suggests_the_nearest(folder):
    with pytest.raises(PlanError, match=r"members\[0\]\.fold: unknown field; did you mean 'folds'\?"):
        parse_plan({"classes": ["a"], "members": [{"name": "m", "checkpoint": "a.pth", "fold": 1}]}, folder)
    with pytest.raises(PlanError, match=r"defaults\.scale: unknown field; did you mean 'scales'\?"):
        parse_plan({"classes": ["a"], "defaults": {"scale": [1.0]}, "members": [{"name": "m", "checkpoint": "a.pth"}]}, folder)


def test_an_unknown_top_level_field_suggests_the_nearest(folder):
    with pytest.raises(PlanError, match=r"member: unknown top-level field; did you mean 'members'\?"):
        parse_plan({"classes": ["a"], "member": []}, folder)


def test_every_plan_problem_is_reported_at_once(folder):
    raw = {"classes": ["a"], "members": [{"name": "m", "checkpoint": "a.pth", "scales": [0], "tta": ["hflipp"], "wieght": 2}]}
    with pytest.raises(PlanError) as info:
        parse_plan(raw, folder)
    text = str(info.value)
    assert text.startswith("3 problems:")
    assert "members[0].scales[0]: must be > 0" in text and "(got 'hflipp')" in text and "did you mean 'weight'?" in text


def test_a_misspelt_encoder_or_architecture_gets_the_nearest_names():
    from segensemble.models.registry import ModelSpec, create_model, resolve_arch

    with pytest.raises(CheckpointError, match=r"unknown encoder 'resnt34'; did you mean 'resnet34'") as info:
        create_model(ModelSpec("Unet", "resnt34", 3))
    assert len(str(info.value)) < 400  # not smp's list of every encoder
    with pytest.raises(CheckpointError, match=r"unknown architecture 'Unett'; did you mean 'Unet'"):
        resolve_arch("Unett")


def test_pseudo_label_finds_the_background_as_evaluate_does():
    from segensemble.jobs.pseudo_label import resolve_background

    camvid = ["Sky", "Building", "Road"]
    value, said = resolve_background("auto", camvid)
    assert value is None and "class 0 is 'Sky', not a background name, so every class counts" in said
    value, said = resolve_background("auto", ["Background", "Car"])
    assert value == 0 and "class 0 'Background' (its name" in said
    assert resolve_background(None, ["Background", "Car"])[0] is None
    assert resolve_background(1, ["Background", "Car"]) == (1, "background: class 1 'Car' (--background)")


def test_pseudo_labels_of_images_already_in_the_train_file_are_not_merged_twice(built, data, tmp_path):
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "pseudo-label", str(data["train"].images), "--build", str(built["dir"]),
                           "-o", str(tmp_path / "pseudo.json"), "--min-prob", "0.3", "--max-uncertain", "0.9", "--merge",
                           str(data["train"].coco), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    kept = len(json.loads((tmp_path / "pseudo.json").read_text())["images"])
    assert kept > 0
    assert f"{kept} kept images are already in the train file" in done.stdout
    assert "background: class 0 'Background' (its name" in done.stdout
    merged = json.loads((tmp_path / "pseudo.merged.json").read_text())
    train = json.loads(data["train"].coco.read_text())
    assert len(merged["images"]) == len(train["images"])
    assert len({i["file_name"] for i in merged["images"]}) == len(merged["images"])


@pytest.mark.parametrize("layout", ["images beside the json", "the root's parent"])
def test_a_wrong_image_root_gets_a_hint_where_datasets_put_images(tmp_path, layout):
    import json

    from segensemble.errors import SegEnsembleError
    from segensemble.formats.coco import coco_images

    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "images" / "val" / "f.png").write_bytes(b"png")
    name, given = ("val/f.png", tmp_path / "images" / "val") if layout == "the root's parent" else ("val/f.png", tmp_path / "wrong")
    coco = tmp_path / "val.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": name, "height": 1, "width": 1}], "annotations": [], "categories": []}))
    with pytest.raises(SegEnsembleError, match=rf"{tmp_path / 'images'} holds 'val/f.png', so that is likely the root: --images"):
        coco_images(coco, given)


def test_a_plan_given_as_build_says_to_pass_it_as_plan(tmp_path):
    from conftest import cli

    (tmp_path / "plan.yaml").write_text("classes: [a]\n")
    (tmp_path / "imgs").mkdir()
    done = cli("predict", tmp_path / "imgs", "--build", tmp_path / "plan.yaml", "-o", tmp_path / "x.csv")
    assert done.returncode != 0
    assert f"a plan, not a build directory; pass it as --plan {tmp_path / 'plan.yaml'}" in done.stderr
    assert not (tmp_path / "x.csv").exists()


def test_an_image_refused_for_its_size_says_to_skip_it_not_only_to_resume(built, tmp_path):
    import numpy as np
    from conftest import cli
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(np.zeros((640, 800, 3), np.uint8)).save(tmp_path / "imgs" / "b.png")
    done = cli("predict", tmp_path / "imgs", "--build", built["dir"], "-o", tmp_path / "sub.csv", "--max-cost", "1", "--quiet")
    assert done.returncode != 0 and "b.png" in done.stderr
    assert "rerun with --resume --skip-bad to continue after them and skip that image" in done.stderr


def test_the_build_summary_explains_clear_pixels(built):
    from segensemble.export.verify_graph import describe

    lines = describe(built["result"].manifest.graphs)
    assert all("of the pixels clear of a tie (top two classes, or P and a threshold, more than 0.0002 apart)" in line for line in lines)


def test_progress_bars_stay_out_of_piped_logs(built, data, tmp_path):
    from conftest import cli

    done = cli("predict", data["test"].images, "--build", built["dir"], "-o", tmp_path / "sub.csv")  # no --quiet; stderr is a pipe
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "img/s]" not in done.stderr


def test_a_piped_build_has_no_bn_recalibration_bar(ckpt_dir, data, tmp_path):
    """The SWA member's BatchNorm recalibration (a bar over bn_images) keeps out of a piped log as every bar does."""
    import json

    from conftest import CLASSES, UNET_KW, cli

    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps({"classes": CLASSES, "defaults": {"arch": "Unet", "encoder": "resnet18", "model_kwargs": UNET_KW},
                                "members": [{"name": "swa", "swa": [str(ckpt_dir / "unet_e20.pth"), str(ckpt_dir / "unet_e30.pth")],
                                             "bn_images": str(data["root"] / "train")}]}))
    done = cli("build", plan, "-o", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "BatchNorm statistics recomputed" in done.stdout + done.stderr  # the recalibration did run
    assert "BN recalibration" not in done.stderr and "\r" not in done.stderr


def test_selection_weights_are_said_as_shares_of_the_vote():
    from segensemble.jobs.analyze.selection import shares

    assert shares([0, 0, 0, 8, 3, 0], ["a", "b", "c", "unet-swa", "fpn", "d"]) == "unet-swa 0.73, fpn 0.27; 4 others 0"
    assert shares([1.0, 1.0], ["a", "b"]) == "b 0.50, a 0.50"


def test_class_colours_never_look_like_the_error_codes():
    import numpy as np

    from segensemble.jobs.analyze.pictures import CODES, MIN_CODE_DISTANCE, palette

    colours = palette(29).astype(float)
    assert len({tuple(c) for c in colours}) == 29
    assert min(np.linalg.norm(np.array(CODES, float) - c, axis=1).min() for c in colours) >= MIN_CODE_DISTANCE - 1


def test_the_error_grid_stays_readable_at_29_classes(tmp_path):
    import numpy as np
    from PIL import Image

    from segensemble.jobs.analyze.pictures import image_grid

    gt = ((np.arange(120)[:, None] // 12) * 10 + np.arange(160)[None] // 16).astype(np.uint8) % 29
    image_grid(tmp_path / "g.png", "t", np.zeros((120, 160, 3), np.uint8), gt, np.roll(gt, 3, axis=1), [f"c{i}" for i in range(29)])
    width, height = Image.open(tmp_path / "g.png").size
    assert width <= 1300 and height <= 1500  # was one row of 33 panels, about 6000 px wide


def test_a_pickled_smp_model_names_its_encoder(trained, tmp_path):
    from segensemble.models.checkpoints import PartialSpec, load_checkpoint
    from segensemble.synthetic.trainer import save_checkpoint

    path = save_checkpoint(trained["unet"], tmp_path / "whole.pt", "pickled")
    loaded = load_checkpoint(path, PartialSpec(), trust_pickle=True)  # the plan names neither arch nor encoder
    assert (loaded.spec.arch, loaded.spec.encoder) == ("Unet", "resnet18")  # was Unet/unknown: another architecture


def test_the_build_says_what_its_files_weigh_and_a_serving_copy_needs_only_the_graphs(built, data, tmp_path):
    import shutil

    import numpy as np

    from segensemble.commands.build import disk_use
    from segensemble.runtime.engine import LABELS, Engine, Want

    text = disk_use(built["dir"], built["result"].manifest)
    assert "reads only the ensemble graphs" in text and "member exports" in text
    lean = tmp_path / "serve-only"
    lean.mkdir()
    for f in [*built["dir"].glob("ensemble*.onnx*"), built["dir"] / "manifest.json"]:
        shutil.copy(f, lean / f.name)
    full, thin = Engine.from_build(built["dir"]), Engine.from_build(lean)
    for ref in list(data["test"].images.iterdir())[:2]:
        image = full.read(ref)
        assert np.array_equal(full.predict([image], Want({LABELS}))[0].labels, thin.predict([image], Want({LABELS}))[0].labels)
