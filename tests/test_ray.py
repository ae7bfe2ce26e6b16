"""--engine ray: a local Ray (2 CPUs) produces byte-for-byte the same CSV and pseudo-labels as local."""

from __future__ import annotations

import shutil

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from segensemble.dist.ray_engine import RayEngine  # noqa: E402
from segensemble.formats.images import list_images  # noqa: E402
from segensemble.jobs.predict import PredictOptions, predict_to_files  # noqa: E402
from segensemble.jobs.pseudo_label import PseudoOptions, pseudo_label  # noqa: E402
from segensemble.jobs.pseudo_rule import PseudoRule  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_ray_outputs_equal_local_byte_for_byte(local_ray, engine, built, data, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(data["test"].images, folder)
    (folder / "zz_bad.png").write_bytes(b"broken")
    refs = list_images(folder)
    outs = {}
    for name, runner in (("local", engine), ("ray", RayEngine(built["dir"], actors=2))):
        opts = PredictOptions(csv=tmp_path / f"{name}.csv", masks_dir=tmp_path / f"{name}_masks", skip_bad=True, progress=False)
        summary = predict_to_files(runner, refs, opts)
        assert [x[0] for x in summary.skipped] == ["zz_bad.png"]
        pseudo_label(runner, refs, PseudoOptions(output=tmp_path / f"{name}.json", rule=PseudoRule(0.5, 0.3), skip_bad=True,
                                                 report=tmp_path / f"{name}.report.csv", progress=False))
        outs[name] = summary
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "local.json").read_bytes()
    assert (tmp_path / "ray.report.csv").read_bytes() == (tmp_path / "local.report.csv").read_bytes()
    for ref in refs[:-1]:
        a = (tmp_path / "local_masks" / (ref.image_id + ".png")).read_bytes()
        assert (tmp_path / "ray_masks" / (ref.image_id + ".png")).read_bytes() == a


def test_ray_resume_continues_the_same_partial_file(local_ray, engine, built, data, tmp_path):
    refs = list_images(data["test"].images)
    ray_engine = RayEngine(built["dir"], actors=1)
    local = tmp_path / "local.csv"
    predict_to_files(engine, refs, PredictOptions(csv=local, progress=False))
    out = tmp_path / "ray.csv"
    predict_to_files(ray_engine, refs[:3], PredictOptions(csv=out, progress=False))
    out.rename(out.with_name("ray.csv.partial"))
    summary = predict_to_files(ray_engine, refs, PredictOptions(csv=out, resume=True, progress=False))
    assert summary.resumed == 3 and out.read_bytes() == local.read_bytes()


def test_cli_engine_ray_end_to_end(local_ray, built, data, engine, tmp_path):
    """The CLI path: the driver loads no model (the actors do) and writes the same CSV as local."""
    from segensemble.cli import main

    local = tmp_path / "local.csv"
    predict_to_files(engine, list_images(data["test"].images), PredictOptions(csv=local, progress=False))
    out = tmp_path / "ray.csv"
    code = main(["predict", str(data["test"].images), "--build", str(built["dir"]), "-o", str(out), "--engine", "ray",
                 "--actors", "1", "--intra-op-threads", "1", "--quiet"])
    assert code == 0 and out.read_bytes() == local.read_bytes()


def test_ray_log_lines_stay_out_of_the_progress_bar(built, data, tmp_path):
    """A fresh process starting its own Ray: cluster start and Ray Data's dataset lines are not printed unless -v."""
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "segensemble.cli", "predict", str(data["test"].images), "--build", str(built["dir"]),
            "-o", str(tmp_path / "ray.csv"), "--engine", "ray", "--actors", "1", "--intra-op-threads", "1"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    quiet = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "Started a local Ray instance" not in quiet.stderr and "Execution plan of Dataset" not in quiet.stderr, quiet.stderr
    loud = subprocess.run([*args[:3], "-v", *args[3:]], capture_output=True, text=True, env=env, timeout=300)
    assert loud.returncode == 0 and "Execution plan of Dataset" in loud.stderr
