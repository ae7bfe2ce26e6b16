"""``ensemble build``: export every plan member to ONNX (reusing earlier exports), write the ensemble graph
(``ensemble.onnx``, and one per profile) verified against the reference loop, then the manifest.

A build directory is self-contained: the member ONNX files, the ensemble graphs and manifest.json. An export
is reused when the file already in the build directory carries the same cache key (source sha256s + every
export option); a graph when its members and views are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segensemble.errors import PlanError, first_line
from segensemble.export.onnx_export import OPSET, ExportOptions, export_onnx
from segensemble.export.preprocess import apply_preprocess
from segensemble.export.verify_graph import write_graphs
from segensemble.formats.atomic import write_atomic
from segensemble.formats.images import list_images
from segensemble.formats.table import text_table
from segensemble.manifest import Manifest, MemberEntry, ModelEntry, Parity, PlanCost, SizedExport, file_sha256
from segensemble.models.checkpoints import PartialSpec, load_checkpoint
from segensemble.models.swa import SwaReport, average_checkpoints, bn_batches, recalibrate_bn
from segensemble.names import safe_name
from segensemble.plan import MemberSpec, Plan
from segensemble.progress import bar_off
from segensemble.task import member_channels_ok


@dataclass
class BuildResult:
    manifest: Manifest
    build_dir: Path
    reused: int
    exported: int
    notes: list[str]


def build(plan: Plan, out_dir: str | Path, *, providers: list[str] | None = None, quiet: bool = False) -> BuildResult:
    """Export and verify every member of ``plan`` into ``out_dir`` and write its manifest."""
    out = Path(out_dir)
    where = f"{plan.path}: " if plan.path else ""
    plan = plan.model_copy(update={"members": [apply_preprocess(m, i, where) for i, m in enumerate(plan.members)]})
    out.mkdir(parents=True, exist_ok=True)
    reused = exported = 0
    notes: list[str] = []
    members = []
    jobs = [(i, m, k) for i, m in enumerate(plan.members) for k in range(1 if m.axis == "swa" else len(m.sources))]
    bar = tqdm(total=len(jobs), desc="export", unit="model", disable=bar_off(not quiet))
    try:
        for i, member in enumerate(plan.members):
            entries = []
            for k in range(1 if member.axis == "swa" else len(member.sources)):
                bar.set_postfix_str(member.name)
                entry, was_reused, note = _build_model(plan, i, member, k, out)
                entries.append(entry)
                reused += was_reused
                exported += not was_reused
                if note:
                    notes.append(f"{member.name}: {note}")
                bar.update()
            members.append(_member_entry(member, entries))
            _check_fixed_shapes(members[-1], f"members[{i}] ({member.name})")
    finally:
        bar.close()  # an error then prints on its own line
    manifest = Manifest(
        classes=list(plan.classes), fusion=plan.fusion, postprocess=plan.post, members=members, providers=providers or _providers(),
        cost=_cost(members), plan=str(plan.path) if plan.path else None,
        profiles=dict(plan.profiles),
    )
    say = (lambda text: None) if quiet else (lambda text: tqdm.write(text))
    graphs = write_graphs(manifest, out, _previous(out), progress=say)
    manifest = manifest.model_copy(update={"graphs": graphs})
    manifest.write(out)
    return BuildResult(manifest, out, reused, exported, notes)


def _previous(out: Path) -> Manifest | None:
    """The manifest an earlier build left here, if it is readable (its graphs may be reused)."""
    from segensemble.errors import SegEnsembleError
    from segensemble.manifest import read_manifest

    try:
        return read_manifest(out)
    except SegEnsembleError:
        return None


def _providers() -> list[str]:
    from segensemble.runtime.sessions import resolve_providers

    return resolve_providers(None)


def _build_model(plan: Plan, index: int, member: MemberSpec, k: int, out: Path) -> tuple[ModelEntry, bool, str | None]:
    where = f"members[{index}] ({member.name})"
    if member.axis == "onnx":
        return _copy_onnx(plan, where, member, out), False, "ONNX member: parity was not verified here (exported elsewhere)"
    sources = member.sources if member.axis == "swa" else [member.sources[k]]
    for src in sources:
        if not Path(src).exists():
            raise PlanError(f"{where}.{member.axis}: {src} does not exist")
    key = _cache_key(plan, member, sources)
    target = out / f"{safe_name(member.name)}-{k}.onnx"
    cached = _read_cached(target, key)
    if cached:
        if cached.channels:  # an export made for another task of the same classes
            _check_channels(plan, cached.channels, f"{where}: {sources[0]}")
        return cached, True, None
    # a binary member may have one logit or a softmax pair: its checkpoint says which
    spec = PartialSpec(member.arch, member.encoder, None if plan.task == "binary" else len(plan.classes), member.in_channels,
                       member.model_kwargs, member.framework)
    if member.factory:  # a team's own model (the plan checked trust_code)
        spec = PartialSpec(member.factory, None, spec.classes, 3, {"factory_kwargs": member.factory_kwargs, "code_path": member.code_path},
                           "factory")
    note = None
    if member.axis == "swa":
        loaded = average_checkpoints([Path(s) for s in sources], spec, trust_pickle=member.trust_pickle)
        count = recalibrate_bn(loaded.model, bn_batches(member.bn_images, member.input_size, member.mean, member.std, member.stride)) \
            if member.bn_images else 0
        note = SwaReport([Path(s) for s in sources], bool(member.bn_images), count).describe()
    else:
        loaded = load_checkpoint(sources[0], spec, trust_pickle=member.trust_pickle)
    _check_channels(plan, loaded.spec.classes, f"{where}: {sources[0]}")
    sizes = _view_sizes(member)
    options = ExportOptions(
        class_names=_channel_names(plan, loaded.spec.classes), mean=member.mean, std=member.std, stride=member.stride,
        view_sizes=tuple(sizes) if sizes else None, extra_metadata={"cache_key": key, "sources": json.dumps(sources)},
    )
    report = export_onnx(loaded, target, options)  # per-size exports: the first file's metadata names its siblings
    return _entry_from_metadata(target, report.metadata, out), False, note


def _view_sizes(member: MemberSpec) -> list[tuple[int, int]] | None:
    from segensemble.views import model_sizes

    return model_sizes(member.input_size, member.tiles.size if member.tiles else None, member.scales, member.tta, member.stride)


def _check_channels(plan: Plan, channels: int, where: str) -> None:
    if not member_channels_ok(plan.task, channels, len(plan.classes)):
        expect = "1 logit (or a 2-class softmax)" if plan.task == "binary" else f"{len(plan.classes)} (one per class in the plan)"
        raise PlanError(f"{where}: the model outputs {channels} channels; a {plan.task} task with classes {list(plan.classes)} "
                        f"needs {expect}")


def _channel_names(plan: Plan, channels: int) -> list[str]:
    """Names of a member's output channels (a binary softmax pair: not-<class>, <class>)."""
    return [f"not {plan.classes[0]}", plan.classes[0]] if channels != len(plan.classes) else list(plan.classes)


def _cache_key(plan: Plan, member: MemberSpec, sources: list[str]) -> str:
    fields = {
        "sources": [file_sha256(Path(s)) for s in sources], "axis": member.axis, "arch": member.arch, "encoder": member.encoder,
        **({"framework": member.framework} if member.framework != "smp" else {}),  # smp keys as before: old exports stay reusable
        **({"factory": [member.factory, member.factory_kwargs, _folder_hash(member.code_path)]} if member.factory else {}),
        "classes": list(plan.classes), "in_channels": member.in_channels, "mean": member.mean, "std": member.std,
        "stride": member.stride, "input_size": member.input_size, "opset": OPSET, "model_kwargs": member.model_kwargs,
        "bn_images": _folder_fingerprint(member.bn_images) if member.bn_images else None,
        **({"view_sizes": _view_sizes(member)} if _view_sizes(member) else {}),  # verified (or exported) at each
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _folder_hash(folder: str | None) -> str | None:
    """The factory's code folder by its Python files' content (not __pycache__): an edited module is a new model."""
    if not folder or not Path(folder).is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(Path(folder).rglob("*.py")):
        digest.update(file.relative_to(folder).as_posix().encode() + file.read_bytes())
    return digest.hexdigest()


def _folder_fingerprint(folder: str) -> list:
    return [(r.image_id, r.path.stat().st_size) for r in list_images(folder)]


def _read_cached(target: Path, key: str) -> ModelEntry | None:
    if not target.is_file():
        return None
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(target), load_external_data=False).metadata_props}
    if meta.get("cache_key") != key:
        return None
    if any(not (target.parent / f).is_file() for _, _, f in json.loads(meta.get("sized_files", "[]"))):
        return None
    return _entry_from_metadata(target, meta, target.parent)


def _entry_from_metadata(target: Path, meta: dict[str, str], out: Path) -> ModelEntry:
    fixed = json.loads(meta["fixed_hw"]) if meta.get("fixed_hw") else None
    sizes = [SizedExport(hw=(h, w), file=f, onnx_sha256=file_sha256(out / f)) for h, w, f in json.loads(meta.get("sized_files", "[]"))]
    return ModelEntry(
        file=target.relative_to(out).as_posix(), sources=json.loads(meta.get("sources", "[]")),
        sha256=meta.get("source_sha256", ""), onnx_sha256=file_sha256(target), form=meta.get("source_form", "onnx"),
        parity=Parity(max_abs_logit=float(meta["parity_max_abs_logit"]), argmax_agreement=float(meta["parity_argmax_agreement"]),
                      shapes=json.loads(meta["parity_shapes"]), bound=_float_or_none(meta.get("parity_bound")),
                      logit_scale=_float_or_none(meta.get("parity_logit_scale"))) if "parity_max_abs_logit" in meta else None,
        gflops=float(meta["gflops"]) if meta.get("gflops") else None,
        gflops_hw=tuple(json.loads(meta["gflops_hw"])) if meta.get("gflops_hw") else None,
        fixed_hw=tuple(fixed) if fixed else None, note=meta.get("shape_note"),
        arch=meta.get("arch"), encoder=meta.get("encoder"), channels=int(meta["classes"]) if meta.get("classes") else None,
        resize_output=meta.get("resize_output") == "1", sizes=sizes,
    )


def _float_or_none(text: str | None) -> float | None:
    return float(text) if text else None


def _copy_onnx(plan: Plan, where: str, member: MemberSpec, out: Path) -> ModelEntry:
    import onnxruntime as ort

    src = Path(member.sources[0])
    if not src.is_file():
        raise PlanError(f"{where}.onnx: {src} does not exist")
    target = out / f"{safe_name(member.name)}-0.onnx"
    _copy_member_onnx(src, target, where)
    try:
        session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise PlanError(f"{where}.onnx: onnxruntime cannot load {src} ({first_line(exc)})") from exc
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    probe = json.loads(metadata["fixed_hw"]) if metadata.get("fixed_hw") else (4 * member.stride, 4 * member.stride)
    feed = {session.get_inputs()[0].name: np.zeros((1, member.in_channels, *probe), np.float32)}
    output = session.run(None, feed)[0]
    _check_output(plan, output, tuple(probe), f"{where}.onnx: {src}")
    entry = _entry_from_metadata(target, metadata, out)
    return entry.model_copy(update={"sources": [str(src)], "sha256": file_sha256(src), "form": "onnx", "channels": output.shape[1],
                                    "output": member.onnx_output, "resize_output": tuple(output.shape[2:]) != tuple(probe)})


def _check_output(plan: Plan, output: np.ndarray, probe: tuple[int, int], where: str) -> None:
    """An ONNX member's first output must be per-pixel class scores (N, C, h, w), float, at any resolution."""
    found = f"found {output.dtype} {tuple(output.shape)} for a {probe[0]}x{probe[1]} input"
    if output.ndim != 4 or not np.issubdtype(output.dtype, np.floating):
        raise PlanError(f"{where}: the first output must be float class scores (N, C, h, w); {found} (an argmax'd label map "
                        "cannot be voted: export the logits)")
    if not member_channels_ok(plan.task, output.shape[1], len(plan.classes)) and member_channels_ok(plan.task, output.shape[3], len(plan.classes)):
        raise PlanError(f"{where}: the output looks channels-last (N, h, w, C); {found}; export it as (N, C, h, w)")
    _check_channels(plan, output.shape[1], where)


def _copy_member_onnx(src: Path, target: Path, where: str) -> None:
    """The member's ONNX file into the build, self-contained: weights kept beside it (external data) are read
    through onnx's loader, which refuses locations outside the file's folder, and embedded."""
    import onnx

    try:
        proto = onnx.load(str(src), load_external_data=False)
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        if external:
            onnx.load_external_data_for_model(proto, str(src.parent))
    except Exception as exc:  # onnx raises ValidationError, DecodeError, OSError
        raise PlanError(f"{where}.onnx: {src}: cannot read it or its external weights ({first_line(exc)})") from None
    if external:
        write_atomic(target, lambda tmp: onnx.save(proto, str(tmp)))
    elif not target.exists() or file_sha256(target) != file_sha256(src):
        write_atomic(target, lambda tmp: shutil.copyfile(src, tmp))


def _member_entry(member: MemberSpec, models: list[ModelEntry]) -> MemberEntry:
    first = models[0]
    return MemberEntry(
        name=member.name, axis=member.axis, arch=member.arch or first.arch, encoder=member.encoder or first.encoder,
        weight=member.weight, class_weights=member.class_weights,
        scales=list(member.scales), tta=list(member.tta), tiles=member.tiles,
        input_size=None if member.tiles else member.input_size or first.fixed_hw,  # a tiled model sees tiles
        mean=member.mean, std=member.std, stride=member.stride, models=models,
    )


def _check_fixed_shapes(entry: MemberEntry, where: str) -> None:
    """A graph exported at one fixed size (an ONNX member's, an `ensemble export --input-size` one) must be able
    to take every view the member asks for; per-size exports cover them by construction."""
    from segensemble.views import model_sizes

    for model in entry.models:
        if not model.fixed_hw or model.sizes:
            continue
        fixed = tuple(model.fixed_hw)
        needed = model_sizes(entry.input_size or fixed, entry.tiles.size if entry.tiles else None, entry.scales, entry.tta, entry.stride)
        for shape in needed:
            if tuple(shape) != fixed:
                raise PlanError(
                    f"{where}: {model.file} is exported at a fixed {fixed[0]}x{fixed[1]} ({model.note or 'static shape'}); "
                    f"the member's views (scales {entry.scales}, tta {entry.tta}) need {shape[0]}x{shape[1]}. Use scales [1.0], "
                    "input_size equal to the export size, and no H/W-swapping TTA on a non-square size for this member"
                )


def _cost(members: list[MemberEntry]) -> PlanCost:
    """Forward passes and estimated GFLOPs per image, at each member's input_size or per megapixel of image."""
    passes, fixed, per_mp, known = 0, 0.0, 0.0, True
    for m in members:
        passes += m.views
        for model in m.models:
            if model.gflops is None or not model.gflops_hw:
                known = False
                continue
            per_pixel = model.gflops / (model.gflops_hw[0] * model.gflops_hw[1]) * len(m.tta) * sum(s * s for s in m.scales)
            if m.input_size:
                fixed += per_pixel * m.input_size[0] * m.input_size[1]
            else:
                per_mp += per_pixel * 1e6
    if not known:
        return PlanCost(forward_passes=passes)
    return PlanCost(forward_passes=passes, gflops_fixed=round(fixed, 3), gflops_per_megapixel=round(per_mp, 3))


def plan_table(manifest: Manifest) -> str:
    """The plan as a table: member x scales x TTA = views."""
    rows = [("member", "axis", "arch/encoder", "models", "scales", "tta", "views", "weight")]
    for m in manifest.members:
        arch = f"{m.arch or m.models[0].form}/{m.encoder or '-'}"
        rows.append((m.name, m.axis, arch, str(len(m.models)), ",".join(f"{s:g}" for s in m.scales),
                     ",".join(m.tta), str(m.views), f"{m.weight:g}"))
    cost = manifest.cost
    rows.append(("total", "", "", str(sum(len(m.models) for m in manifest.members)), "", "", str(cost.forward_passes), ""))
    post = f"\npost-processing: {manifest.postprocess.describe(manifest.classes)}" if manifest.postprocess else ""
    return text_table(rows, rule=True) + f"\nper image: {cost.describe()}\ntask: {manifest.fusion.describe()}{post}"
