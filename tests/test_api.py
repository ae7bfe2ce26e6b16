"""The Python front door (segensemble.open / build / RunConfig): the same answer as `ensemble predict`, and
docs/python.md run as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import read_png

import segensemble as se
from segensemble.formats.images import read_image
from segensemble.runtime.engine import PROBS, Engine, Want

DOCS = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def test_the_snippet_answers_what_predict_writes(built, data, tmp_path):
    paths = sorted(data["test"].images.glob("*.png"))
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "predict", str(data["test"].images), "--build", str(built["dir"]),
                           "--save-masks", str(tmp_path / "masks"), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ens = se.open(built["dir"])
    one = ens.predict(paths[0], probs=True)
    many = ens.predict(paths)
    streamed = list(ens.predict(p for p in paths))
    for path, a, b in zip(paths, many, streamed):
        mask = read_png(tmp_path / "masks" / (path.name + ".png"))
        np.testing.assert_array_equal(a.labels, mask)
        np.testing.assert_array_equal(b.labels, mask)
    mixed = list(ens.predict(iter([read_image(paths[1]), paths[2]])))  # arrays and paths in one stream
    np.testing.assert_array_equal(mixed[0].labels, many[1].labels)
    np.testing.assert_array_equal(mixed[1].labels, many[2].labels)
    want = Engine.from_build(built["dir"]).predict([read_image(paths[0])], Want({PROBS}))[0]
    assert np.abs(one.probs - want.probs).max() <= 1e-6
    assert one.probs.shape == (len(ens.classes), *one.labels.shape) and many[0].probs is None


def test_arrays_are_checked_and_budgeted(built):
    ens = se.open(built["dir"], se.RunConfig(max_cost=0.001))
    with pytest.raises(se.SegEnsembleError, match="RGB uint8"):
        ens.predict(np.zeros((8, 8), np.uint8))
    with pytest.raises(se.SegEnsembleError, match="megapixel-views"):
        ens.predict(np.zeros((256, 256, 3), np.uint8))


@pytest.mark.parametrize(("field", "value"), [("calls_in_flight", 0), ("images_per_call", -1), ("intra_op_threads", 1.5),
                                              ("max_cost", float("nan")), ("precision", "fp8")])
def test_run_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(se.SegEnsembleError, match=field):
        se.RunConfig(**{field: value})


def test_docs_python_md_runs_as_written(built, data, tmp_path, capsys):
    shutil.copytree(built["dir"], tmp_path / "build")
    (tmp_path / "test").mkdir()
    for i, path in enumerate(sorted(data["test"].images.glob("*.png"))[:3]):
        shutil.copy(path, tmp_path / "test" / f"{i + 1:04d}.png")
    (tmp_path / "exported").mkdir()
    shutil.copy(built["dir"] / "unet-ms-0.onnx", tmp_path / "exported" / "unet.onnx")
    shutil.copy(built["dir"] / "fpn-0.onnx", tmp_path / "exported" / "fpn.onnx")
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) >= 6
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"docs/python.md block {i + 1}", "exec"), namespace)
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    assert "precision: 'fp8' is not one of fp32, bf16, fp16" in printed
    assert (tmp_path / "small-build" / "ensemble.onnx").is_file()


def test_import_segensemble_stays_light():
    """The package face imports nothing heavy until a public name is used (the CLI starts fast)."""
    code = "import sys, segensemble; assert 'onnxruntime' not in sys.modules and 'torch' not in sys.modules; print(segensemble.__all__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_old_flag_spellings_still_work_and_say_what_replaced_them(built, data, tmp_path):
    from conftest import cli

    done = cli("predict", data["test"].images, "--build", built["dir"], "-o", tmp_path / "s.csv", "--workers", "1",
               "--threads", "1", "--batch-images", "1", "--quiet")
    assert done.returncode == 0, done.stderr
    for old, new in (("--workers", "--calls-in-flight"), ("--threads", "--intra-op-threads"), ("--batch-images", "--images-per-call")):
        assert f"warning: {old} is deprecated; use {new}" in done.stderr
