"""The pseudo-label job: run the engine over unlabelled images, apply the rule, write COCO + report.

Progress is journaled one JSON line per image to ``<output>.partial.jsonl`` (flushed per image), so
``resume`` continues after the last complete line; the COCO file, the merged file and the report CSV are
assembled from the journal at the end and written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from segensemble.errors import ImageError, SegEnsembleError
from segensemble.formats.atomic import write_atomic
from segensemble.formats.coco import has_background
from segensemble.formats.coco_roots import MergedRoot, check_resolves, find_image_root, merged_root, rebase
from segensemble.formats.coco_writer import assemble, categories, image_annotations, mask_annotations, merge, read_json
from segensemble.formats.images import ImageRef
from segensemble.formats.masks import is_ours, mask_files, save_mask, save_masks
from segensemble.formats.paths import check_outputs
from segensemble.jobs.pseudo_rule import PseudoRule, decide, decide_masks, share_histogram
from segensemble.progress import bar_off
from segensemble.runtime.engine import MASKS, PROBS, Runner, Want

REPORT_HEADER = ["image", "nonbackground_pixels", "uncertain_pixels", "uncertain_share", "decision"]


def default_report(output: Path) -> Path:
    """The per-image report beside the COCO output: ``pseudo.json`` -> ``pseudo.report.csv``."""
    return output.with_name(output.stem + ".report.csv")


@dataclass(frozen=True)
class PseudoOptions:
    output: Path
    rule: PseudoRule = PseudoRule()
    merge_with: Path | None = None
    merged_output: Path | None = None
    merge_root: Path | None = None  # the folder merge_with's file_names are relative to (default: found, see coco_roots)
    images_root: Path | None = None  # the folder the refs' image_ids are relative to (needed to merge)
    masks_dir: Path | None = None
    report: Path | None = None
    file_prefix: str = ""
    resume: bool = False
    skip_bad: bool = False
    progress: bool = True
    inputs: tuple[Path, ...] = ()  # files the run reads besides the images (a COCO file): never an output

    @property
    def merged_path(self) -> Path:
        return self.merged_output or self.output.with_name(self.output.stem + ".merged.json")

    @property
    def journal(self) -> Path:
        return self.output.with_name(self.output.name + ".partial.jsonl")


@dataclass
class PseudoSummary:
    kept: int = 0
    dropped: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    shares: list[float] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    merged_root: Path | None = None  # the image root of the merged file
    duplicates: list[str] = field(default_factory=list)  # kept images the train file already had: not merged again
    background: str = ""  # how the background class was chosen

    def describe(self) -> str:
        text = (f"kept {self.kept}, dropped {self.dropped}" + (f", skipped {len(self.skipped)}" if self.skipped else "")
                + (f"\n{self.background}" if self.background else ""))
        if self.duplicates:
            text += (f"\n{len(self.duplicates)} kept images are already in the train file (e.g. {self.duplicates[0]}): "
                     "left out of the merged file, not added twice")
        return text + "\nuncertain share per image:\n" + share_histogram(self.shares)


def resolve_background(choice: int | None | str, classes: list[str]) -> tuple[int | None, str]:
    """The background class id (None: every class counts) for ``--background`` (an id, None, or "auto": class 0
    when its name says background, as evaluate decides), and the summary's line saying which and why."""
    if choice == "auto":
        if has_background(classes):
            return 0, f"background: class 0 {classes[0]!r} (its name; --background none counts it as a class)"
        return None, (f"background: none (class 0 is {classes[0]!r}, not a background name, so every class counts; "
                      "--background 0 makes it the background)")
    if choice is None:
        return None, "background: none (--background none)"
    return int(choice), f"background: class {choice} {classes[int(choice)]!r} (--background)"


def pseudo_label(engine: Runner, refs: list[ImageRef], options: PseudoOptions) -> PseudoSummary:
    """Run, decide, journal; then write the COCO file(s), masks and report."""
    rule = options.rule
    if engine.fusion.sigmoid:  # every class of a mask task is a foreground class: there is no background to leave out
        if rule.ignore_uncertain:
            raise SegEnsembleError("--ignore-uncertain marks pixels of a label map; a multilabel or binary task keeps masks "
                                   "(leave it out)")
        rule = replace(rule, background=None)
        options = replace(options, rule=rule)
    rule.validate(len(engine.classes))
    _check_output_paths(refs, options, engine)  # a bad or colliding name stops the run before anything is written
    merging = _merging(options)  # a merge that cannot work stops the run before any image is predicted
    journal_path = options.journal
    records = _read_journal(journal_path, refs) if options.resume else []
    done = {r["image"] for r in records}
    todo = [r for r in refs if r.image_id not in done]
    options.output.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(refs), initial=len(records), unit="img", desc="pseudo-label", disable=bar_off(options.progress))
    with open(journal_path, "a" if records else "w") as journal:
        for ref, result in engine.stream(todo, Want({PROBS, MASKS} if engine.fusion.sigmoid else {PROBS})):
            if isinstance(result, ImageError):
                if not options.skip_bad:
                    raise result
                record = {"image": ref.image_id, "skipped": result.reason}
            else:
                record = _record(ref, result, rule, engine, options)
            journal.write(json.dumps(record) + "\n")
            journal.flush()
            records.append(record)
            bar.update()
    bar.close()
    summary = _finish(records, engine.classes, options, merging)
    journal_path.unlink()
    return summary


def _record(ref: ImageRef, prediction, rule: PseudoRule, engine: Runner, options: PseudoOptions) -> dict:
    probs, classes = prediction.probs, len(engine.classes)
    if engine.fusion.sigmoid:
        decision, labels = decide_masks(probs, rule), None
    else:
        decision, labels = decide(probs, rule)
    record = {"image": ref.image_id, "foreground": decision.foreground, "uncertain": decision.uncertain,
              "share": decision.share, "kept": decision.kept, "height": probs.shape[1], "width": probs.shape[2]}
    if decision.kept:
        if labels is None:  # overlapping classes: one annotation per class present, as the masks predict writes
            record["annotations"] = mask_annotations(prediction.masks.astype(bool))
            if options.masks_dir:
                save_masks(options.masks_dir, ref.image_id, prediction, ref.path, engine.classes, engine.fusion.task)
        else:
            record["annotations"] = image_annotations(labels, rule.background, classes)
            if options.masks_dir:
                save_mask(options.masks_dir, ref.image_id, labels, ref.path)
    return record


def _read_journal(path: Path, refs: list[ImageRef]) -> list[dict]:
    if not path.exists():
        return []
    known = {r.image_id for r in refs}
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # a torn last line from an interrupted run
        if record.get("image") not in known:
            raise SegEnsembleError(f"{path}: cannot resume, it lists {record.get('image')!r} which is not in this input; rerun without --resume")
        records.append(record)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def _check_output_paths(refs: list[ImageRef], options: PseudoOptions, engine: Runner) -> None:
    """The COCO file, merged file, report, journal and masks: distinct, none an input (the training file given to
    --merge above all), and no mask replacing a file segensemble did not write."""
    named = [(options.output, "pseudo-label COCO file"), (options.journal, "journal")]
    named += [(options.merged_path, "merged COCO file")] if options.merge_with else []
    named += [(options.report, "report")] if options.report else []
    masks = [(p, f"mask of {r.image_id}") for r in refs for p in mask_files(options.masks_dir, r.image_id, r.path, engine.classes,
                                                                          engine.fusion.task)] if options.masks_dir else []
    user_named = {p for p, _ in named}
    inputs = [r.path for r in refs] + list(options.inputs) + ([options.merge_with] if options.merge_with else [])
    check_outputs(named + masks, inputs, lambda p: p in user_named or is_ours(p))


def _merging(options: PseudoOptions) -> tuple[dict, MergedRoot] | None:
    """The train COCO and the one image root the merged file will have (None when not merging)."""
    if not options.merge_with:
        return None
    if options.images_root is None:
        raise SegEnsembleError("merging pseudo-labels needs the unlabelled images' root folder (images_root)")
    train = read_json(options.merge_with)
    train_root = find_image_root(train, Path(options.merge_with), options.merge_root)
    return train, merged_root(train_root, options.images_root)


def _finish(records: list[dict], classes: list[str], options: PseudoOptions, merging) -> PseudoSummary:
    summary = PseudoSummary()
    kept, kept_names = [], []
    for r in records:
        if "skipped" in r:
            summary.skipped.append((r["image"], r["skipped"]))
            continue
        if r["foreground"]:
            summary.shares.append(r["share"])
        if r["kept"]:
            summary.kept += 1
            kept_names.append(r["image"])
            kept.append({"file_name": options.file_prefix + r["image"], "height": r["height"], "width": r["width"],
                         "annotations": r["annotations"]})
        else:
            summary.dropped += 1
    coco = assemble(kept, categories(classes, options.rule.background))
    _write_json(options.output, coco)
    summary.outputs.append(options.output)
    if merging:
        train, where = merging
        rebased = {**coco, "images": [{**i, "file_name": rebase(options.images_root, kept_name, where.root)}
                                      for i, kept_name in zip(coco["images"], kept_names)]}
        merged, summary.duplicates = merge(train, rebased, str(options.merge_with), where.train_prefix)
        merged_path = options.merged_path
        check_resolves(merged, where.root, str(merged_path))
        _write_json(merged_path, merged)
        summary.outputs.append(merged_path)
        summary.merged_root = where.root
    if options.report:
        write_atomic(options.report, lambda tmp: tmp.write_text(_report_csv(records)))
        summary.outputs.append(options.report)
    return summary


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data)))


def _report_csv(records: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REPORT_HEADER)
    for r in records:
        if "skipped" in r:
            writer.writerow([r["image"], "", "", "", f"skipped: {r['skipped']}"])
        else:
            writer.writerow([r["image"], r["foreground"], r["uncertain"], f"{r['share']:.6f}", "kept" if r["kept"] else "dropped"])
    return buffer.getvalue()
