"""The analysis report as one self-contained HTML page (figures from report.json, pictures beside it)."""

from __future__ import annotations

import html


def _fmt(v, spec: str = ".4f") -> str:
    """A figure as the page shows it; n/a where it is undefined (a removed axis the plan does not use)."""
    return "n/a" if v is None else format(v, spec) if isinstance(v, float | int) else html.escape(str(v))


_HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>segensemble analysis</title>
<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}
td,th{padding:2px 10px;text-align:right}td:first-child{text-align:left}</style>
</head><body><h1>Ensemble analysis</h1>"""


def fusion_section(search: dict) -> str:
    """The vote rule (and thresholds) search: each rule on the selection images, the choice, its held-out gain."""
    metric = "mean Dice" if search["metric"] == "dice" else "mIoU"
    rules = "".join(f"<tr><td>{html.escape(r)}</td><td>{_fmt(v)}</td></tr>" for r, v in search["rules_on_selection"].items())
    held = search.get("holdout")
    if held:
        gains = "".join(f"<tr><td>{html.escape(c)}</td><td>{_fmt(g, '+.4f')}</td></tr>" for c, g in held["gain_per_class"].items())
        verdict = (f"<p>Held-out ({search['holdout_images']} images): plan {_fmt(held['plan'])}, chosen {_fmt(held['chosen'])}.</p>"
                   f"<table><tr><th>class</th><th>held-out gain</th></tr>{gains}</table>")
    else:
        verdict = "<p>No held-out images (rerun with --holdout 0.3): the choice is scored on the images it was chosen on.</p>"
    return (f"<h2>Vote rule{' and thresholds' if 'thresholds' in search['chosen'] else ''}</h2>"
            f"<p>{metric} of each rule on the {search['selection_images']} selection images; plan "
            f"{html.escape(str(search['plan']))}, chosen {html.escape(str(search['chosen']))}.</p>"
            f"<table><tr><th>vote</th><th>{metric}</th></tr>{rules}</table>{verdict}"
            f"<p>Written to the tuned plan: {html.escape(search['kept_why'])}.</p>")


def render_page(report: dict) -> str:
    """index.html for a report dict as ``analyze`` returns it."""
    tuned = '<p>Tuned plan: <a href="plan.tuned.yaml">plan.tuned.yaml</a></p>' if report.get("tuned_plan") else ""
    if "ablation" not in report:  # a mask task: the vote and thresholds search only
        return (f"{_HEAD}<p>{report['images']} validation images, {html.escape(report['task'])} task.</p>"
                f"{fusion_section(report['fusion_search'])}{tuned}<p>Every figure is in <a href=\"report.json\">report.json</a>.</p>"
                "</body></html>")
    rows = "".join(
        f"<tr><td>{html.escape(r['variant'])}</td><td>{_fmt(r.get('miou'))}</td><td>{_fmt(r.get('gain'), '+.4f')}</td>"
        f"<td>{_fmt(r.get('forward_passes'), 'd')}</td><td>{_fmt(r.get('ms_per_image'), '.1f')}</td>"
        f"<td>{html.escape(r.get('note', ''))}</td></tr>"
        for r in report["ablation"])
    sel = report["selection"]
    holdout = sel.get("holdout")
    honest = (f"<p>Held-out ({report['holdout_images']} images): plan weights {_fmt(holdout['plan_weights'])}, chosen "
              f"{_fmt(holdout['chosen'])}, best single member {_fmt(holdout['best_single'])}.</p>") if holdout else ""
    pics = report["pictures"]
    worst = "".join(f'<p><a href="{w["picture"]}"><img src="{w["picture"]}" style="max-width:100%" '
                    f'alt="{html.escape(w["image"])}"></a></p>' for w in pics["worst"])
    return f"""{_HEAD}
<p>{report['images']} validation images; full ensemble mIoU <b>{_fmt(report['full']['miou'])}</b>
({report['full']['forward_passes']} forward passes, {_fmt(report['full']['ms_per_image'], '.1f')} ms per image);
best single member {html.escape(report['best_member'])}.</p>
<h2>What each axis and member buys</h2><p>gain = full ensemble mIoU − variant mIoU</p>
<table><tr><th>variant</th><th>mIoU</th><th>gain</th><th>passes</th><th>ms/img</th><th></th></tr>{rows}</table>
<h2>Selection</h2><p>Chosen by {html.escape(sel['chosen']['method'])}: shares of the vote {html.escape(sel['chosen']['shares'])}
(mIoU on selection images {_fmt(sel['chosen']['miou_selection'])}; plan weights {_fmt(sel['plan_weights_miou_selection'])};
best single {_fmt(sel['best_single_miou_selection'])}).</p>{honest}
<p>Ablation and selection score the mean of probabilities; the plan's vote rule and the others are compared below.</p>
{fusion_section(report['fusion_search'])}{tuned}
<h2>Per class</h2><p><img src="{pics['iou_per_class']}"></p><p><img src="{pics['confusion']}"></p>
<h2>Where it fails</h2><p>The {len(pics['worst'])} images with the lowest per-image mIoU, worst first.</p>{worst}
<p>Every figure is in <a href="report.json">report.json</a>.</p></body></html>"""
