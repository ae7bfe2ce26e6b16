"""Tiled members (sliding window): the grid and importance map equal MONAI's, the ensemble graph equals the
reference loop (verified at build), and a tiled member's output equals MONAI's ``sliding_window_inference``
run in PyTorch on the same model with the same tiles, overlap, blend and TTA, on odd sizes, with scales,
hflip and rot90, gaussian and constant blends, and images smaller than a tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SIGMOID_CLASSES, UNET_KW, build_plan

from segensemble.errors import PlanError
from segensemble.models.checkpoints import PartialSpec, load_checkpoint
from segensemble.plan import parse_plan
from segensemble.runtime.engine import MASKS, MEMBERS, PROBS, Engine, Want
from segensemble.synthetic.data import smooth_image
from segensemble.tiles import importance_map, interval, padding, starts
from segensemble.views import bilinear

monai_utils = pytest.importorskip("monai.data.utils")
monai_inferers = pytest.importorskip("monai.inferers")


@pytest.mark.parametrize("side,tile,overlap", [(100, 32, 0.25), (64, 64, 0.25), (33, 64, 0.5), (1000, 512, 0.25), (97, 30, 0.9)])
def test_grid_equals_monai(side, tile, overlap):
    padded = max(side, tile)
    step = interval(padded, tile, overlap)
    from monai.inferers.utils import _get_scan_interval

    assert step == _get_scan_interval((padded,), (tile,), 1, (overlap,))[0]
    want = [s[0].start for s in monai_utils.dense_patch_slices((padded,), (tile,), (step,))]
    assert list(starts(padded, tile, overlap)) == want
    diff = max(tile - side, 0)
    assert padding(side, tile) == (diff // 2, diff - diff // 2)


@pytest.mark.parametrize("size,blend,sigma", [((64, 64), "gaussian", 0.125), ((32, 96), "gaussian", 0.3), ((16, 24), "constant", 0.125)])
def test_importance_map_equals_monai(size, blend, sigma):
    want = monai_utils.compute_importance_map(size, mode=blend, sigma_scale=sigma).numpy()
    assert np.abs(importance_map(size, blend, sigma) - want).max() < 1e-6


def test_tiles_and_input_size_are_refused_together_and_sizes_fit_the_stride(sigmoid_ckpts, tmp_path):
    raw = {"task": "multilabel", "classes": SIGMOID_CLASSES, "members": [
        {"name": "t", "checkpoint": str(sigmoid_ckpts["unet"]), "arch": "Unet", "encoder": "resnet18", "model_kwargs": UNET_KW,
         "tiles": {"size": [64, 64]}, "input_size": [64, 64]}]}
    with pytest.raises(PlanError, match="input_size .* or tiles .*, not both; keep tiles for members trained on crops"):
        parse_plan(raw, tmp_path)
    raw["members"][0].pop("input_size")
    raw["members"][0]["tiles"] = {"size": [48, 64]}
    with pytest.raises(PlanError, match=r"tiles: size \[48, 64\] must be a multiple of the member's stride 32"):
        parse_plan(raw, tmp_path)


@pytest.fixture(scope="module")
def tiled_build(sigmoid_ckpts, sigmoid_data, tmp_path_factory):
    """Tiled members beside a whole-image one; the build verifies the graph against the reference loop."""
    shared = {"arch": "Unet", "encoder": "resnet18", "model_kwargs": UNET_KW}
    members = [
        {"name": "gauss", "checkpoint": str(sigmoid_ckpts["unet"]), **shared, "tta": ["identity", "hflip"],
         "tiles": {"size": [64, 64], "overlap": 0.25}, "scales": [0.75, 1.0]},
        {"name": "flat", "checkpoint": str(sigmoid_ckpts["unet"]), **shared, "tta": ["identity", "rot90"],
         "tiles": {"size": [32, 64], "overlap": 0.5, "blend": "constant"}},
        {"name": "whole", "checkpoint": str(sigmoid_ckpts["fpn"])},
    ]
    out = tmp_path_factory.mktemp("tiled")
    result = build_plan({"task": "multilabel", "classes": SIGMOID_CLASSES, "members": members}, out, sigmoid_data["root"])
    assert result.manifest.graphs[""].verified.max_abs_prob <= 1e-4
    return out


def _monai(member, ckpt, image: np.ndarray, scale: float) -> np.ndarray:
    """MONAI's sliding window in PyTorch: the member's model, its TTA views averaged as the predictor."""
    model = load_checkpoint(ckpt, PartialSpec("Unet", "resnet18", len(SIGMOID_CLASSES), 3, UNET_KW)).model.eval()
    H, W = image.shape[:2]
    h, w = max(1, int(np.floor(H * scale + 0.5))), max(1, int(np.floor(W * scale + 0.5)))
    x = (bilinear(image.astype(np.float64), h, w) / 255.0 - np.array(member.mean)) / np.array(member.std)
    x = torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))

    def predictor(tile):
        views = []
        for t in member.tta:
            if t == "identity":
                views.append(torch.sigmoid(model(tile)))
            elif t == "hflip":
                views.append(torch.sigmoid(model(tile.flip(-1))).flip(-1))
            elif t == "rot90":
                views.append(torch.rot90(torch.sigmoid(model(torch.rot90(tile, 1, (2, 3)))), -1, (2, 3)))
        return torch.stack(views).mean(0)

    tiles = member.tiles
    with torch.no_grad():
        out = monai_inferers.sliding_window_inference(x, tuple(tiles.size), 4, predictor, overlap=tiles.overlap, mode=tiles.blend,
                                                      sigma_scale=tiles.sigma_scale)[0].numpy().astype(np.float64)
    return bilinear(out.transpose(1, 2, 0), H, W).transpose(2, 0, 1)


@pytest.mark.parametrize("hw", [(70, 93), (45, 150), (20, 30)], ids=["odd", "wide", "smaller than a tile"])
def test_tiled_members_equal_monai(hw, tiled_build, sigmoid_ckpts):
    engine = Engine.from_build(tiled_build)
    image = smooth_image(hw, 3)
    got = engine.predict([image], Want({MEMBERS}))[0].members
    for name in ("gauss", "flat"):
        member = next(m for m in engine.members if m.name == name)
        want = np.mean([_monai(member, sigmoid_ckpts["unet"], image, s) for s in member.scales], axis=0)
        assert np.abs(got[name] - want).max() < 1e-4, name
        assert ((got[name] > 0.5) == (want > 0.5)).mean() >= 0.999


def test_cost_counts_tiles(tiled_build):
    from segensemble.cost import image_cost
    from segensemble.tiles import tile_count

    engine = Engine.from_build(tiled_build)
    gauss = next(m for m in engine.members if m.name == "gauss")
    cost = image_cost([gauss], (200, 300), 3)
    tiles = sum(tile_count((int(np.floor(200 * s + 0.5)), int(np.floor(300 * s + 0.5))), gauss.tiles) for s in gauss.scales)
    assert cost.megapixel_views == pytest.approx(tiles * 64 * 64 * 2 / 1e6)
    # every scale's tiles run in one call (both TTA views, hflip, with them): all of them count at once
    from segensemble.cost import ACTIVATION_BYTES_PER_PIXEL

    outputs = 3 * 200 * 300 * 4 * 4
    assert cost.memory_mb == pytest.approx((tiles * 64 * 64 * 2 * ACTIVATION_BYTES_PER_PIXEL + outputs) / 2**20)


def test_served_equals_offline_on_a_tiled_plan(tiled_build, sigmoid_data, tmp_path):
    import io
    import zipfile

    import httpx
    from conftest import read_png, running_server
    from PIL import Image

    from segensemble.formats.images import list_images
    from segensemble.formats.masks import mask_path
    from segensemble.jobs.predict import PredictOptions, predict_to_files

    refs = list_images(sigmoid_data["test"].images)[:2]
    predict_to_files(Engine.from_build(tiled_build), refs, PredictOptions(None, tmp_path, format="png", progress=False))
    with running_server(tiled_build) as (url, _):
        for ref in refs:
            answer = httpx.post(f"{url}/segment?format=png", content=ref.path.read_bytes(), headers={"content-type": "image/png"},
                                timeout=60)
            archive = zipfile.ZipFile(io.BytesIO(answer.content))
            for name in SIGMOID_CLASSES:
                served = np.asarray(Image.open(io.BytesIO(archive.read(f"{name}.png"))))
                assert np.array_equal(served, read_png(mask_path(tmp_path, ref.image_id, ref.path, name)))


@pytest.fixture(scope="module")
def regional_build(sigmoid_ckpts, sigmoid_data, tmp_path_factory):
    """Every member tiled (the graph takes a region): scales, hflip and rot90, both blends, two tile shapes."""
    shared = {"arch": "Unet", "encoder": "resnet18", "model_kwargs": UNET_KW}
    members = [
        {"name": "gauss", "checkpoint": str(sigmoid_ckpts["unet"]), **shared, "tta": ["identity", "hflip"],
         "tiles": {"size": [64, 64], "overlap": 0.25}, "scales": [0.75, 1.0, 1.25]},
        {"name": "flat", "checkpoint": str(sigmoid_ckpts["unet"]), **shared, "tta": ["identity", "rot90"],
         "tiles": {"size": [32, 64], "overlap": 0.5, "blend": "constant"}},
    ]
    out = tmp_path_factory.mktemp("regional")
    build_plan({"task": "multilabel", "classes": SIGMOID_CLASSES, "members": members}, out, sigmoid_data["root"])
    return out


def _stitched(engine: Engine, image: np.ndarray, rows: list[int], cols: list[int], chunk: int | None = None) -> dict[str, np.ndarray]:
    """Each output of the graph run region by region over the cuts ``rows`` x ``cols`` (``chunk`` tiles per model
    call), put back together."""
    from segensemble.graph_io import MASKS, PROBS, member_output

    names = [MASKS, PROBS, *(member_output(m.name) for m in engine.members)]
    whole = dict(zip(names, engine.graph.run(image[None], names)))
    out = {k: np.full_like(v, 255 if v.dtype == np.uint8 else np.nan) for k, v in whole.items()}
    for r0, r1 in zip(rows[:-1], rows[1:]):
        for c0, c1 in zip(cols[:-1], cols[1:]):
            for name, part in zip(names, engine.graph.run(image[None], names, region=(r0, r1, c0, c1), tile_batch=chunk)):
                assert part.shape[-2:] == (r1 - r0, c1 - c0), (name, r0, r1, c0, c1)
                out[name][..., r0:r1, c0:c1] = part
    return whole, out


@pytest.mark.parametrize("hw,rows,cols", [
    ((150, 211), [0, 1, 47, 48, 100, 150], [0, 64, 65, 130, 211]),  # one-row and one-column regions, cuts off the grid
    ((40, 50), [0, 13, 40], [0, 50]),  # smaller than a tile at some scales: padding
], ids=["odd", "small"])
@pytest.mark.parametrize("chunk", [None, 3])  # 3: chunks of unequal tile counts, across scales
def test_regions_stitched_equal_the_whole_image(regional_build, hw, rows, cols, chunk):
    engine = Engine.from_build(regional_build)
    assert engine.graph.regional
    whole, stitched = _stitched(engine, smooth_image(hw, 5), rows, cols, chunk)
    for name, value in whole.items():
        if value.dtype == np.uint8:
            assert (stitched[name] == value).mean() >= 0.9999, name
        else:
            assert np.abs(stitched[name] - value).max() < 1e-5, name


def test_a_graph_with_an_untiled_member_takes_no_region(tiled_build):
    assert not Engine.from_build(tiled_build).graph.regional


def test_a_large_image_runs_region_by_region_within_the_memory_budget(regional_build):
    from segensemble.cost import Budget
    from segensemble.runtime.regions import region_bytes

    whole = Engine.from_build(regional_build)
    image = smooth_image((300, 410), 9)
    want = Want({MEMBERS, PROBS})
    expected = whole.predict([image], want)[0]
    full_mb = whole.cost(image.shape[:2]).memory_mb
    small = Engine.from_build(regional_build, budget=Budget(max_memory_mb=full_mb / 40))
    regions, chunk = small.regions(image.shape[:2]), small.tile_batch(image.shape[:2])
    assert len(regions) > 2 and chunk is not None
    assert max(region_bytes(small.members, image.shape[:2], r, 3, 1, chunk) for r in regions) <= full_mb / 40 * 2**20
    covered = np.zeros(image.shape[:2], int)
    for r0, r1, c0, c1 in regions:
        covered[r0:r1, c0:c1] += 1
    assert (covered == 1).all()
    small.admit(image.shape[:2], "big.png")  # the regions fit: admitted although the whole image would not
    got = small.predict([image], want | {MASKS})[0]
    assert np.abs(got.probs - expected.probs).max() < 1e-5
    assert (got.masks == (expected.probs > 0.5)).mean() > 0.999


def test_regions_compute_fewer_tiles_than_any_plain_grid_that_fits(regional_build):
    from segensemble.cost import Budget
    from segensemble.runtime.regions import region_bytes, tiles_of

    hw = (300, 410)
    whole = Engine.from_build(regional_build)
    budget = Budget(max_memory_mb=whole.cost(hw).memory_mb / 20)
    engine = Engine.from_build(regional_build, budget=budget)
    chosen, chunk = sum(tiles_of(engine.members, hw, r) for r in engine.regions(hw)), engine.tile_batch(hw)
    for rows in range(1, 9):
        for cols in range(1, 9):
            r, c = np.linspace(0, hw[0], rows + 1).round().astype(int), np.linspace(0, hw[1], cols + 1).round().astype(int)
            grid = [(r[i], r[i + 1], c[j], c[j + 1]) for i in range(rows) for j in range(cols)]
            if max(region_bytes(engine.members, hw, g, 3, 1, chunk) for g in grid) <= budget.max_memory_mb * 2**20:
                assert chosen <= sum(tiles_of(engine.members, hw, g) for g in grid), (rows, cols)


def test_the_tiles_loop_holds_its_members_weights(regional_build):
    """ONNX Runtime's CPU layout optimizer (NCHWc) only rewrites convolutions whose weights are initializers of
    their own graph: every convolution in a tiles Loop must read its weights from the body."""
    import onnx

    model = onnx.load(str(regional_build / "ensemble.onnx"))
    loops = [n for n in model.graph.node if n.op_type == "Loop"]
    assert len(loops) == 2  # one per member: its scales' tiles together
    outer = {i.name for i in model.graph.initializer}
    for loop in loops:
        body = loop.attribute[0].g
        own = {i.name for i in body.initializer}
        convs = [n for n in body.node if n.op_type == "Conv"]
        assert convs and all(n.input[1] in own and n.input[1] not in outer for n in convs)
