"""What a newcomer sees when something is missing: one line naming the fix, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCK = (
    "import sys\n"
    "class Missing:\n"
    "    '''Acts as if these packages were not installed (the import fails as it would in a bare venv).'''\n"
    "    def __init__(self, names): self.names = names\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in self.names:\n"
    "            raise ModuleNotFoundError('No module named ' + repr(name), name=name)\n"
    "sys.meta_path.insert(0, Missing({blocked!r}))\n"
    "from segensemble.cli import main\n"
    "sys.exit(main({argv!r}))\n"
)


def _run_without(blocked: set[str], argv: list[str]) -> subprocess.CompletedProcess:
    code = BLOCK.format(blocked=sorted(blocked), argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def _one_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["export", "build", "demo"])
def test_export_commands_without_torch(command, built, ckpt_dir, tmp_path):
    argv = {"export": ["export", str(ckpt_dir / "unet.pth"), "--arch", "Unet", "--encoder", "resnet18", "--classes", "4",
                       "-o", str(tmp_path / "m.onnx")],
            "build": ["build", str(built["plan"]), "-o", str(tmp_path / "build"), "--quiet"],
            "demo": ["demo", "--out", str(tmp_path / "demo")]}[command]
    line = _one_line(_run_without({"torch", "torchvision", "segmentation_models_pytorch"}, argv))
    assert line.startswith(f"error: ensemble {command} needs torch") and line.endswith("pip install 'segensemble[export]'")


def test_serve_without_its_extra(built):
    line = _one_line(_run_without({"fastapi", "uvicorn", "fastapi_offline"}, ["serve", "--build", str(built["dir"])]))
    assert "pip install 'segensemble[serve]'" in line


def test_analyze_pictures_without_matplotlib(built, data, tmp_path):
    argv = ["analyze", str(built["plan"]), "--coco", str(data["train"].coco), "--images", str(data["train"].images),
            "--build", str(built["dir"]), "-o", str(tmp_path / "r"), "--quiet"]
    assert "pip install 'segensemble[analyze]'" in _one_line(_run_without({"matplotlib"}, argv))


def test_serve_on_a_missing_build_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "serve", "--build", str(tmp_path / "nosuch")],
                          capture_output=True, text=True, timeout=120)
    line = _one_line(done)
    assert "nosuch" in line and "not a build directory" in line and "ensemble build" in line
    assert "uvicorn" not in done.stdout + done.stderr  # refused before the server starts


def test_a_real_import_bug_is_not_disguised(tmp_path):
    """An ImportError of something no extra provides is a bug: it keeps its traceback."""
    done = _run_without({"numpy"}, ["predict", str(tmp_path), "--build", str(tmp_path)])
    assert done.returncode != 2 and "Traceback" in done.stderr


def test_a_wrong_image_root_says_the_rule_and_the_likely_root(built, data):
    """`--images` is the folder COCO file_names are relative to; the demo's layout puts them in data/<split>/."""
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "evaluate", "--coco", str(data["train"].coco),
                           "--images", str(data["root"]), "--build", str(built["dir"]), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    line = _one_line(done)
    assert "COCO file_names are relative to the image root" in line and str(data["root"]) in line
    assert f"{data['train'].images} holds" in line
