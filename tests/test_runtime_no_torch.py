"""The runtime path never imports torch: checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

RUNTIME = [
    "segensemble.cli", "segensemble.plan", "segensemble.manifest", "segensemble.formats.images",
    "segensemble.runtime.engine", "segensemble.jobs.predict", "segensemble.jobs.evaluate",
    "segensemble.formats.submission", "segensemble.formats.masks", "segensemble.formats.coco",
    "segensemble.jobs.metrics", "segensemble.jobs.pseudo_rule", "segensemble.serve.app", "segensemble.jobs.analyze.report",
    "segensemble.runtime.sessions", "segensemble.export.graph", "segensemble.export.verify_graph", "segensemble.formats.paths",
]


def test_runtime_modules_do_not_import_torch():
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in RUNTIME) + \
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in\n" \
        "             ('torch', 'segmentation_models_pytorch', 'timm', 'torchvision', 'transformers'))\n" \
        "assert not bad, bad[:5]\nprint('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_predict_runs_without_torch_installed(built, data, tmp_path):
    """Block torch imports outright and run a real prediction through the CLI."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'segmentation_models_pytorch', 'torchvision', 'transformers'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from segensemble.cli import main\n"
        f"sys.exit(main(['predict', {str(data['test'].images)!r}, '--build', {str(built['dir'])!r}, '-o', {str(tmp_path / 's.csv')!r}, '--quiet']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "s.csv").read_text().count("\n") == 7
