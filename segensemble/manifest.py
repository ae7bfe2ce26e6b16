"""The build manifest: everything the runtime needs to rebuild the ensemble from a build directory.

Written by ``ensemble build`` (torch side), read by the engine (runtime side); plain JSON, typed here.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from segensemble.errors import SegEnsembleError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 2  # 2: the ensemble graph (ensemble.onnx) is part of every build


class ModelEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    file: str  # relative to the build directory
    sources: list[str]
    sha256: str  # of the source checkpoint(s), not of the ONNX file
    onnx_sha256: str
    form: str
    parity: dict | None = None  # {"max_abs_logit": .., "argmax_agreement": .., "shapes": [...]}, None for onnx members
    gflops: float | None = None  # per forward pass at gflops_hw
    gflops_hw: tuple[int, int] | None = None
    fixed_hw: tuple[int, int] | None = None
    note: str | None = None
    arch: str | None = None
    encoder: str | None = None


class MemberEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    axis: str  # checkpoint | folds | epochs | swa | onnx
    arch: str | None
    encoder: str | None
    weight: float
    scales: list[float]
    tta: list[str]
    input_size: tuple[int, int] | None
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


class GraphEntry(BaseModel):
    """An ensemble graph of the build (the whole plan or one profile) and how it was verified."""

    model_config = ConfigDict(frozen=True)

    file: str
    sha256: str
    cache_key: str
    verified: dict  # {"max_abs_prob": .., "labels_agree": .., "sizes": [[h, w], ..], "batch": n}


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    format: int = MANIFEST_FORMAT
    classes: list[str]
    members: list[MemberEntry]
    providers: list[str]
    cost: dict  # {"forward_passes": int, "gflops": float | None, "at_hw": [h, w]}
    plan: str | None = None
    profiles: dict[str, dict] = {}  # name -> {members, tta, scales}: lighter subsets, e.g. for serving
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
        from segensemble.plan import Profile, apply_profile

        if name not in self.profiles:
            raise SegEnsembleError(f"no profile {name!r} in this build; profiles: {sorted(self.profiles) or 'none'}")
        members = apply_profile(self.members, Profile(**self.profiles[name]), f"profiles.{name}")
        return self.model_copy(update={"members": members})

    def write(self, build_dir: Path) -> None:
        target = build_dir / MANIFEST_NAME
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2))
        tmp.replace(target)


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 already checked in this process


def verify_file(build_dir: Path, file: str, sha256: str) -> Path:
    """The build's ``file``, checked against the sha256 the manifest recorded (once per file and version)."""
    from segensemble.models.checkpoints import file_sha256

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


def read_manifest(build_dir: str | Path) -> Manifest:
    path = Path(build_dir) / MANIFEST_NAME
    if not path.is_file():
        raise SegEnsembleError(f"{build_dir}: not a build directory (no {MANIFEST_NAME}); run `ensemble build plan.yaml -o {build_dir}`")
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise SegEnsembleError(f"{path}: invalid manifest ({str(exc).splitlines()[0]})") from exc
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise SegEnsembleError(f"{path}: manifest format {found}, this segensemble reads format {MANIFEST_FORMAT}; "
                               "rerun `ensemble build plan.yaml -o DIR` (unchanged exports are reused)")
    try:
        return Manifest.model_validate(raw)
    except ValueError as exc:
        raise SegEnsembleError(f"{path}: invalid manifest ({str(exc).splitlines()[0]})") from exc
