"""The build manifest: everything the runtime needs to rebuild the ensemble from a build directory.

Written by ``ensemble build`` (torch side), read by the engine (runtime side); plain JSON, typed here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from segensemble.errors import SegEnsembleError, first_line
from segensemble.files import open_regular
from segensemble.postprocess import PostProcess
from segensemble.profiles import Profile, apply_profile
from segensemble.task import Fusion
from segensemble.tiles import TileOptions

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 2  # 2: the ensemble graph (ensemble.onnx) is part of every build


class Parity(BaseModel):
    """How a member export matched PyTorch (ONNX Runtime vs the model, at ``shapes``)."""

    model_config = ConfigDict(frozen=True)

    max_abs_logit: float
    argmax_agreement: float
    shapes: list[list[int]]
    bound: float | None = None  # the limit max_abs_logit was held to (onnx_export: relative to the logits' scale)
    logit_scale: float | None = None  # the largest |logit| PyTorch gave


class SizedExport(BaseModel):
    """One of a model's per-size exports (a graph that cannot be dynamic in H and W: one file per view size)."""

    model_config = ConfigDict(frozen=True)

    hw: tuple[int, int]
    file: str
    onnx_sha256: str


class ModelEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    file: str  # relative to the build directory
    sources: list[str]
    sha256: str  # of the source checkpoint(s), not of the ONNX file
    onnx_sha256: str
    form: str
    parity: Parity | None = None  # None for ONNX members (exported elsewhere, not verified here)
    gflops: float | None = None  # per forward pass at gflops_hw
    gflops_hw: tuple[int, int] | None = None
    fixed_hw: tuple[int, int] | None = None
    note: str | None = None
    arch: str | None = None
    encoder: str | None = None
    channels: int | None = None  # output logits; a binary task also takes 2 (a softmax pair, read as l1 - l0)
    output: str = "logits"  # or "probs" (an ONNX member that ends in its softmax/sigmoid: turned back into logits)
    resize_output: bool = False  # the output is at another resolution than the input (resized bilinearly to it)
    sizes: list[SizedExport] = []  # per-size exports, ``file`` the first of them; empty: one graph for every size

    def file_for(self, hw) -> str:
        """The export that takes an (h, w) input: the per-size one, or the only one."""
        return next((s.file for s in self.sizes if tuple(s.hw) == tuple(hw)), self.file)

    def files(self) -> list[str]:
        return [s.file for s in self.sizes] or [self.file]


class MemberEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    axis: str  # checkpoint | folds | epochs | swa | onnx
    arch: str | None
    encoder: str | None
    weight: float
    class_weights: list[float] | None = None  # one per class, beside weight
    scales: list[float]
    tta: list[str]
    input_size: tuple[int, int] | None
    tiles: TileOptions | None = None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stride: int
    models: list[ModelEntry]

    @property
    def model_count(self) -> int:
        return len(self.models)

    @property
    def views(self) -> int:
        return len(self.models) * len(self.scales) * len(self.tta)


class Verification(BaseModel):
    """How an ensemble graph matched the reference loop at build time (``export/verify_graph.py``)."""

    model_config = ConfigDict(frozen=True)

    max_abs_prob: float
    labels_agree: float  # share of pixels with a clear top-two margin whose label equals the reference's
    sizes: list[list[int]]
    batch: int
    batch_vs_alone: float = 0.0


class PlanCost(BaseModel):
    """Forward passes and estimated GFLOPs per image: a fixed part (members with an input_size) and a part per
    megapixel of the image (members that run at the image's own size); None where a model's cost is unknown."""

    model_config = ConfigDict(frozen=True)

    forward_passes: int
    gflops_fixed: float | None = None
    gflops_per_megapixel: float | None = None

    def describe(self) -> str:
        """The cost at the plan's sizes, in words."""
        text = f"{self.forward_passes} forward passes"
        if self.gflops_fixed is None or self.gflops_per_megapixel is None:
            return text
        parts = [f"~{self.gflops_fixed:.1f} GFLOPs"] if self.gflops_fixed else []
        if self.gflops_per_megapixel:
            parts.append(f"~{self.gflops_per_megapixel:.1f} GFLOPs per megapixel of image (members without input_size run at "
                         f"the image's own size: {self.gflops_per_megapixel * 512 * 512 / 1e6:.1f} at 512x512)")
        return f"{text}, " + " + ".join(parts)


class GraphEntry(BaseModel):
    """An ensemble graph of the build (the whole plan or one profile) and how it was verified."""

    model_config = ConfigDict(frozen=True)

    file: str
    sha256: str
    cache_key: str
    verified: Verification | None = None  # None only for graphs built outside `ensemble build` (tests, analyze)
    data: dict[str, str] = {}  # external weight files the graph reads (graphs past protobuf's 2 GB limit): name -> sha256

    def verify(self, build_dir: Path) -> Path:
        """The graph's path, once the graph and every weights file it reads match their recorded sha256."""
        for name, sha in self.data.items():
            verify_file(build_dir, name, sha)
        return verify_file(build_dir, self.file, self.sha256)


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    format: int = MANIFEST_FORMAT
    classes: list[str]
    fusion: Fusion = Fusion()  # task, vote rule, thresholds
    postprocess: PostProcess | None = None  # steps after the graph, applied by the engine (postprocess.py)
    members: list[MemberEntry]
    providers: list[str]
    cost: PlanCost
    plan: str | None = None
    profiles: dict[str, Profile] = {}  # lighter named subsets, e.g. for serving
    graphs: dict[str, GraphEntry] = {}  # "" -> ensemble.onnx; profile name -> that profile's graph

    def graph_entry(self, profile: str | None) -> GraphEntry:
        """The graph file that runs the whole ensemble (None) or a profile."""
        key = profile or ""
        if key not in self.graphs:
            if profile and profile not in self.profiles:
                raise SegEnsembleError(f"no profile {profile!r} in this build; profiles: {sorted(self.profiles) or 'none'}")
            raise SegEnsembleError(f"this build has no ensemble graph for {profile or 'the whole plan'}; "
                                   "rerun `ensemble build plan.yaml -o DIR` (unchanged exports are reused)")
        return self.graphs[key]

    def profile(self, name: str | None) -> Manifest:
        """This manifest restricted to a named profile (None: the whole ensemble)."""
        if name is None:
            return self
        if name not in self.profiles:
            raise SegEnsembleError(f"no profile {name!r} in this build; profiles: {sorted(self.profiles) or 'none'}")
        members = apply_profile(self.members, self.profiles[name], f"profiles.{name}")
        return self.model_copy(update={"members": members})

    def write(self, build_dir: Path) -> None:
        from segensemble.formats.atomic import write_atomic

        write_atomic(build_dir / MANIFEST_NAME, lambda tmp: tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2)))


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory's files (names and bytes, sorted) for smp directories."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open_regular(file) as fh:  # a FIFO or /dev/zero is refused, not read forever
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 already checked in this process


def verify_file(build_dir: Path, file: str, sha256: str) -> Path:
    """The build's ``file``, checked against the sha256 the manifest recorded (once per file and version)."""
    path = Path(build_dir) / file
    if not path.is_file():
        raise SegEnsembleError(f"{path}: listed in {MANIFEST_NAME} but missing; rerun `ensemble build plan.yaml -o {build_dir}`")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = file_sha256(path)
    if _VERIFIED[key] != sha256:
        raise SegEnsembleError(f"{path}: its sha256 differs from the one {MANIFEST_NAME} recorded (the file was replaced or "
                               f"damaged after the build); rerun `ensemble build plan.yaml -o {build_dir}`")
    return path


@dataclass(frozen=True)
class Build:
    """A build directory and its manifest: what the runtime opens, each file checked against its recorded sha256
    before it is used. The Engine is the session over one of its graphs."""

    dir: Path
    manifest: Manifest

    @classmethod
    def open(cls, build_dir: str | Path) -> Build:
        return cls(Path(build_dir), read_manifest(build_dir))

    def graph(self, profile: str | None = None) -> Path:
        """The verified graph file of the whole ensemble (None) or a profile."""
        return self.manifest.graph_entry(profile).verify(self.dir)

    def model(self, entry: ModelEntry) -> Path:
        """A member model's verified ONNX file (and its per-size siblings, verified too)."""
        for sized in entry.sizes:
            verify_file(self.dir, sized.file, sized.onnx_sha256)
        return verify_file(self.dir, entry.file, entry.onnx_sha256)


def read_manifest(build_dir: str | Path) -> Manifest:
    path = Path(build_dir) / MANIFEST_NAME
    if Path(build_dir).is_file() and Path(build_dir).suffix.lower() in (".yaml", ".yml"):
        raise SegEnsembleError(f"{build_dir}: a plan, not a build directory; pass it as --plan {build_dir} (built into build/ "
                               f"beside it), or build it first: `ensemble build {build_dir} -o build/` and pass --build build/")
    if not path.is_file():
        raise SegEnsembleError(f"{build_dir}: not a build directory (no {MANIFEST_NAME}); run `ensemble build plan.yaml -o {build_dir}`")
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise SegEnsembleError(f"{path}: invalid manifest ({first_line(exc)})") from exc
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise SegEnsembleError(f"{path}: manifest format {found}, this segensemble reads format {MANIFEST_FORMAT}; "
                               "rerun `ensemble build plan.yaml -o DIR` (unchanged exports are reused)")
    try:
        return Manifest.model_validate(raw)
    except ValueError as exc:
        raise SegEnsembleError(f"{path}: invalid manifest ({first_line(exc)})") from exc
