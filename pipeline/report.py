"""The results report: ``reports/report.md`` + PNG figures, from the metrics files alone.

Everything here is read from what the stages wrote (``metrics/*.json``, the merge decisions
beside each merged model, ``reports/registry.json``), so the report can be rebuilt at any time
(``hpe report``) and renders from a small fixed metrics set in tests. Published figures appear
in their own clearly marked rows: they are references, never measurements of this run.

Sections: cross-dataset head-pose table (every candidate and the CNN baseline, published
references beside them), MAE by yaw bin, the grounding-vs-head-pose trade-off per candidate,
``layer_wta`` decisions per layer, invalid-answer rates, training curves, the registry gate,
and keypoint AP per domain when VLPose metrics exist.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import layout
from pipeline.atomic import atomic_dir, write_text_atomic
from pipeline.evaluate.yardsticks import BLANK_SUFFIX, CLEARLY_BELOW_CHANCE, IN_DOMAIN, ratio_to_chance
from pipeline.pose2d.chance import MEAN_POSE

# Published cross-dataset results (trained on 300W-LP), yaw / pitch / roll / MAE in degrees.
# 6DRepNet: Hempel et al., ICIP 2022, Table 1.
PUBLISHED_HEADPOSE: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "6DRepNet (published)": {"aflw2000": (3.63, 4.91, 3.37, 3.97), "biwi": (3.24, 4.48, 2.68, 3.47)},
}
PUBLISHED_CLAIMS = [
    "HPE-CogVLM (published): cross-dataset MAE 31.5% lower than 6DRepNet.",
]
# VLPose paper: COCO / HumanArt keypoint AP (ground-truth boxes).
PUBLISHED_KEYPOINTS: dict[str, dict[str, float]] = {
    "ViTPose-B fine-tuned (published)": {"humanart": 32.55},
    "VLPose-B (published)": {"humanart": 34.33, "coco": 75.75},
    "ViTPose-H fine-tuned (published)": {"humanart": 40.77},
    "VLPose-H (published)": {"humanart": 43.03, "coco": 78.84},
}
ANGLES = ("mae_yaw", "mae_pitch", "mae_roll", "mae")


@dataclass
class ReportInputs:
    """What the report is built from (all optional but the evaluation table)."""

    candidates: list[dict[str, Any]]  # metrics/evaluation.json rows
    per_candidate: dict[str, dict[str, Any]] = field(default_factory=dict)  # metrics/eval/<c>.json
    baseline: dict[str, Any] | None = None  # metrics/baseline.json
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> merge_decisions.json
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # name -> rows
    registry: dict[str, Any] | None = None  # reports/registry.json
    keypoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> {domain: {AP...}}
    headpose_sets: list[str] = field(default_factory=list)  # the cross-dataset test sets
    chance: dict[str, Any] = field(default_factory=dict)  # set -> chance metrics (evaluation.json)

    @property
    def all_sets(self) -> list[str]:
        """The in-domain held-out set, then the cross-dataset test sets."""
        return [IN_DOMAIN, *self.headpose_sets]

    def chance_mae(self, name: str) -> float | None:
        return (self.chance.get(name) or {}).get("mae")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(root: Path = Path("."), headpose_sets: Sequence[str] = ("aflw2000", "biwi_hpdb")) -> ReportInputs:
    """Read every metrics file the stages wrote under ``root`` (missing ones are left out)."""
    table = _read_json(root / layout.evaluation_table())
    if table is None:
        raise FileNotFoundError(f"{root / layout.evaluation_table()}: no evaluation table (run `hpe evaluate` first)")
    per = {}
    for path in sorted((root / layout.eval_metrics_dir()).glob("*.json")):
        data = json.loads(path.read_text())
        per[data.get("candidate", path.stem)] = data
    decisions = {}
    for path in sorted((root / layout.merged_root()).glob(f"*/{'merge_decisions.json'}")):
        decisions[path.parent.name] = json.loads(path.read_text())
    curves = {p.stem: json.loads(p.read_text()) for p in sorted((root / layout.METRICS / "curves").glob("*.json"))}
    baseline = _read_json(root / layout.baseline_metrics())
    keypoints = {p.stem: json.loads(p.read_text()) for p in sorted((root / layout.METRICS / "pose").glob("*.json"))}
    return ReportInputs(
        candidates=table["candidates"],
        per_candidate=per,
        baseline=baseline,
        decisions=decisions,
        curves={k: v for k, v in curves.items() if v},
        registry=_read_json(root / layout.registry_out()),
        keypoints=keypoints,
        headpose_sets=list(headpose_sets),
        # The baseline stage scores chance on the same sets: the fallback before `evaluate` ran.
        chance=table.get("chance") or (baseline or {}).get("chance") or {},
    )


# ---------------------------------------------------------------- tables
def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _set_label(name: str) -> str:
    labels = {"aflw2000": "AFLW2000", "biwi_hpdb": "BIWI", "biwi_npz": "BIWI (npz)", "biwi": "BIWI"}
    return labels.get(name, "300W-LP held-out" if name == IN_DOMAIN else name)


def _published_key(name: str) -> str:
    return "biwi" if name.startswith("biwi") else name


def _angles(m: Mapping[str, Any] | None) -> dict[str, Any]:
    m = m or {}
    return {k: m.get(k) for k in (*ANGLES, "invalid_rate")}


def _with_ratios(row: dict[str, Any], inputs: ReportInputs) -> dict[str, Any]:
    """Add ``ratio`` (set → MAE / chance) and ``learnt`` (every cross-dataset ratio clearly below chance)."""
    row["ratio"] = {s: ratio_to_chance(row[s]["mae"], inputs.chance_mae(s)) for s in inputs.all_sets}
    cross = [row["ratio"][s] for s in inputs.headpose_sets]
    row["learnt"] = bool(cross) and all(r is not None and r <= CLEARLY_BELOW_CHANCE for r in cross)
    return row


def headpose_rows(inputs: ReportInputs) -> list[dict[str, Any]]:
    """One row per measured candidate (VLMs, then the baseline, then chance): per set (in-domain
    and cross-dataset) yaw/pitch/roll/MAE, MAE / chance, and the blank-image MAE."""
    rows = []
    for c in inputs.candidates:
        per = inputs.per_candidate.get(c["candidate"], {})
        row = {
            "name": c["candidate"],
            "kind": c["kind"],
            "mean_mae": c.get("mean_mae"),
            "grounding": c.get("grounding/acc_iou50"),
            "blank_mae": (per.get(IN_DOMAIN + BLANK_SUFFIX) or {}).get("mae", c.get(f"{IN_DOMAIN}{BLANK_SUFFIX}/mae")),
        }
        for s in inputs.all_sets:
            row[s] = _angles(per.get(s) or {k: c.get(f"{s}/{k}") for k in (*ANGLES, "invalid_rate")})
        rows.append(_with_ratios(row, inputs))
    if inputs.baseline is not None:
        tests = inputs.baseline["test"]
        row = {"name": f"{inputs.baseline['baseline']} (CNN baseline)", "kind": "baseline", "grounding": None}
        row.update({s: _angles(tests.get(s)) for s in inputs.all_sets}, blank_mae=None)
        maes = [row[s]["mae"] for s in inputs.headpose_sets]
        row["mean_mae"] = None if None in maes else sum(maes) / len(maes)
        rows.append(_with_ratios(row, inputs))
    if inputs.chance:
        row = {"name": "chance (training median)", "kind": "chance", "grounding": None, "blank_mae": None}
        row.update({s: _angles(inputs.chance.get(s)) for s in inputs.all_sets})
        maes = [row[s]["mae"] for s in inputs.headpose_sets]
        row["mean_mae"] = None if None in maes else sum(maes) / len(maes)
        rows.append(_with_ratios(row, inputs))
    return rows


def headpose_table(inputs: ReportInputs, rows: list[dict[str, Any]]) -> list[str]:
    sets = inputs.headpose_sets
    head = f"| candidate | {_set_label(IN_DOMAIN)} **MAE** | "
    head += " | ".join(f"{_set_label(s)} yaw | pitch | roll | **MAE**" for s in sets)
    head += " | mean MAE | × chance (" + " / ".join(_set_label(s) for s in sets) + ") | blank-image MAE"
    head += " | invalid % | grounding acc@0.5 |"
    lines = [head, "|" + "---|" * (2 + 4 * len(sets) + 5)]
    for r in rows:
        cells = [r["name"], f"**{_fmt(r[IN_DOMAIN]['mae'])}**"]
        inv = []
        for s in sets:
            m = r[s]
            cells += [_fmt(m["mae_yaw"]), _fmt(m["mae_pitch"]), _fmt(m["mae_roll"]), f"**{_fmt(m['mae'])}**"]
            inv.append(m.get("invalid_rate") or 0.0)
        ratios = " / ".join(_fmt(r["ratio"][s]) for s in sets)
        cells += [_fmt(r["mean_mae"]), ratios, _fmt(r["blank_mae"])]
        cells += [_fmt(100 * sum(inv) / len(inv), 1) if r["kind"] != "chance" else "—", _fmt(r["grounding"])]
        lines.append("| " + " | ".join(cells) + " |")
    for name, figures in PUBLISHED_HEADPOSE.items():
        cells = [f"*{name}*", "—"]
        for s in sets:
            f = figures.get(_published_key(s))
            cells += [f"*{v:.2f}*" for v in f] if f else ["—"] * 4
        known = [figures[_published_key(s)][3] for s in sets if _published_key(s) in figures]
        cells += [f"*{sum(known) / len(known):.2f}*" if len(known) == len(sets) else "—", "—", "—", "—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ---------------------------------------------------------------- figures
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    _plt().close(fig)
    return out


def _grouped_bars(ax: Any, categories: Sequence[str], series: Mapping[str, Sequence[float]]) -> None:
    """One bar per series beside each other within each category, categories as x labels."""
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        ax.bar([j + i * width for j in range(len(categories))], values, width=width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(categories))])
    ax.set_xticklabels(categories, rotation=35, ha="right", fontsize=7)
    ax.legend()


def plot_bins(inputs: ReportInputs, out: Path) -> Path | None:
    """MAE by true-|yaw| bin, one line per candidate, one panel per test set."""
    if not inputs.per_candidate:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(inputs.headpose_sets), figsize=(6 * len(inputs.headpose_sets), 4), squeeze=False)
    for ax, s in zip(axes[0], inputs.headpose_sets, strict=True):
        for name, per in inputs.per_candidate.items():
            bins = (per.get(s) or {}).get("by_yaw_bin") or []
            xs = [b["bin"] for b in bins if b["mae"] is not None]
            ax.plot(xs, [b["mae"] for b in bins if b["mae"] is not None], marker="o", label=name)
        if inputs.baseline is not None:
            bins = inputs.baseline["test"].get(s, {}).get("by_yaw_bin") or []
            xs = [b["bin"] for b in bins if b["mae"] is not None]
            ax.plot(
                xs,
                [b["mae"] for b in bins if b["mae"] is not None],
                "k--",
                marker="s",
                label=f"{inputs.baseline['baseline']} (CNN)",
            )
        ax.set_title(f"{_set_label(s)}: MAE by true |yaw|")
        ax.set_xlabel("|yaw| bin (degrees)")
        ax.set_ylabel("mean MAE (degrees)")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, out)


def plot_tradeoff(rows: list[dict[str, Any]], out: Path) -> Path | None:
    """Grounding acc@0.5 against mean head-pose MAE: the capability-retention picture."""
    points = [r for r in rows if r["grounding"] is not None and r["mean_mae"] is not None]
    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in points:
        ax.scatter(r["grounding"], r["mean_mae"], marker={"base": "s", "lora": "^"}.get(r["kind"], "o"))
        ax.annotate(r["name"], (r["grounding"], r["mean_mae"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    base = [r for r in rows if r["kind"] in ("baseline", "chance") and r["mean_mae"] is not None]
    for r in base:
        ax.axhline(r["mean_mae"], color="k", linestyle="--", linewidth=1, label=r["name"])
    ax.set_xlabel("grounding acc@IoU0.5 (higher: still grounds)")
    ax.set_ylabel("mean head-pose MAE, degrees (lower is better)")
    if base:
        ax.legend(fontsize=7)
    return _save(fig, out)


def plot_decisions(decisions: Mapping[str, Any], out: Path) -> Path | None:
    """layer_wta: per group the similarity against the threshold, coloured by the decision."""
    wta = decisions.get("layer_wta")
    if not wta:
        return None
    plt = _plt()
    ds = wta["decisions"]
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(ds)), 4))
    colours = [
        "tab:green" if d["action"] == "combine" else ("tab:blue" if d["winner"] == 0 else "tab:orange") for d in ds
    ]
    ax.bar(range(len(ds)), [d["similarity"] if d["similarity"] is not None else 0.0 for d in ds], color=colours)
    tau = wta["params"].get("threshold")
    if tau is not None:
        ax.axhline(tau, color="r", linestyle="--", label=f"τ = {tau}")
        ax.legend()
    ax.set_xticks(range(len(ds)))
    ax.set_xticklabels([d["group"].replace("model.", "") for d in ds], rotation=90, fontsize=5)
    ax.set_ylabel("cosine similarity of the task deltas")
    ax.set_title("layer_wta: green = combined, blue = task 0 wins, orange = task 1 wins")
    return _save(fig, out)


def plot_invalid(rows: list[dict[str, Any]], sets: Sequence[str], out: Path) -> Path | None:
    """Invalid-answer rate per candidate and test set (merged formats that break show here)."""
    vlm = [r for r in rows if r["kind"] not in ("baseline", "chance")]
    if not vlm:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(vlm)), 4))
    series = {_set_label(s): [100 * (r[s]["invalid_rate"] or 0.0) for r in vlm] for s in sets}
    _grouped_bars(ax, [r["name"] for r in vlm], series)
    ax.set_ylabel("invalid answers (%)")
    return _save(fig, out)


def plot_curves(curves: Mapping[str, list[dict[str, float]]], out: Path) -> Path | None:
    """Training loss per step of every training stage."""
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rows in curves.items():
        pts = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    return _save(fig, out)


# ---------------------------------------------------------------- records (Prefect table artifacts)
def _round(v: Any, digits: int = 2) -> Any:
    return round(v, digits) if isinstance(v, float) else v


def candidate_records(inputs: ReportInputs) -> list[dict[str, Any]]:
    """The head-pose table as flat rows: every measured candidate, the baseline, chance, then the
    published figures (``kind: published``), for a table artifact in the Prefect UI."""
    records = []
    for r in headpose_rows(inputs):
        rec: dict[str, Any] = {"candidate": r["name"], "kind": r["kind"]}
        rec[f"{_set_label(IN_DOMAIN)} MAE"] = _round(r[IN_DOMAIN]["mae"])
        for s in inputs.headpose_sets:
            rec[f"{_set_label(s)} MAE"] = _round(r[s]["mae"])
            rec[f"{_set_label(s)} × chance"] = _round(r["ratio"][s])
            rate = r[s]["invalid_rate"]
            rec[f"{_set_label(s)} invalid %"] = None if rate is None or r["kind"] == "chance" else round(100 * rate, 1)
        rec["mean MAE"] = _round(r["mean_mae"])
        rec["blank-image MAE"] = _round(r["blank_mae"])
        rec["grounding acc@0.5"] = _round(r["grounding"])
        records.append(rec)
    for name, figures in PUBLISHED_HEADPOSE.items():
        rec = {"candidate": name, "kind": "published", f"{_set_label(IN_DOMAIN)} MAE": None}
        maes = []
        for s in inputs.headpose_sets:
            mae = figures.get(_published_key(s), (None,) * 4)[3]
            rec[f"{_set_label(s)} MAE"], rec[f"{_set_label(s)} × chance"] = mae, None
            rec[f"{_set_label(s)} invalid %"] = None
            maes.append(mae)
        rec["mean MAE"] = None if None in maes else round(sum(maes) / len(maes), 2)
        rec["blank-image MAE"] = rec["grounding acc@0.5"] = None
        records.append(rec)
    return records


KEYPOINT_STATS = ("AP", "AP50", "AP75", "AR")


def keypoint_records(keypoints: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """COCO AP/AP50/AP75/AR (in %) per pose model and domain, with ground-truth boxes and, where
    the user gave detections, with detected boxes."""
    records = []
    for model, m in keypoints.items():
        for boxes, domains in (
            ("ground truth", m.get("domains", {})),
            ("detected", m.get("detected", {}).get("domains", {})),
        ):
            for domain, stats in domains.items():
                rec = {"model": model, "domain": domain, "boxes": boxes}
                for k in KEYPOINT_STATS:
                    v = stats.get(k)
                    rec[k] = None if v is None else round(100 * v, 2)
                records.append(rec)
    return records


# ---------------------------------------------------------------- text
def plot_keypoint_scenes(keypoints: Mapping[str, Mapping[str, Any]], out: Path) -> Path | None:
    """COCO AP per HumanArt scene (and the COCO domain), one bar per pose model."""
    scenes = sorted({s for m in keypoints.values() for s in m.get("scenes", {})})
    if not scenes:
        return None
    columns = ["coco", *scenes]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(7, 0.45 * len(columns) * len(keypoints)), 4))
    series = {}
    for name, m in keypoints.items():
        values = [(m.get("domains", {}) if c == "coco" else m.get("scenes", {})).get(c, {}).get("AP") for c in columns]
        series[name] = [100 * (v or 0.0) for v in values]
    _grouped_bars(ax, columns, series)
    ax.set_ylabel("AP (%)")
    return _save(fig, out)


def keypoint_findings(keypoints: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Each model against the mean-pose yardstick, and VLPose against the fine-tuned ViTPose,
    per domain, read off the metrics files."""
    out = []
    chance = keypoints.get(MEAN_POSE)
    for model, m in keypoints.items():
        if model == MEAN_POSE or not chance:
            continue
        parts = []
        for domain in ("coco", "humanart"):
            a, c = m["domains"].get(domain, {}).get("AP"), chance["domains"].get(domain, {}).get("AP")
            if a is not None and c is not None:
                parts.append(f"{domain} AP {100 * a:.2f} vs mean pose {100 * c:.2f}")
        if parts:
            out.append(f"{model}: " + "; ".join(parts) + ".")
    vl, ft = keypoints.get("vlpose"), keypoints.get("finetuned")
    if not vl or not ft:
        return out
    for domain in ("humanart", "coco"):
        a, b = vl["domains"].get(domain, {}).get("AP"), ft["domains"].get(domain, {}).get("AP")
        if a is not None and b is not None:
            verdict = "above" if a > b else "below" if a < b else "equal to"
            gap = f" (by {100 * abs(a - b):.2f} AP points)" if a != b else ""
            out.append(f"VLPose {domain} AP {100 * a:.2f} is {verdict} the fine-tuned ViTPose's {100 * b:.2f}{gap}.")
    return out


def _worst_invalid(row: Mapping[str, Any], sets: Sequence[str]) -> float:
    return max((row[s]["invalid_rate"] or 0.0 for s in sets), default=0.0)


def _ratios(r: Mapping[str, Any], sets: Sequence[str]) -> str:
    return ", ".join(f"{_set_label(s)} {_fmt(r['ratio'][s])}×" for s in sets)


def findings(
    rows: list[dict[str, Any]], inputs: ReportInputs, tolerance: float | None, max_invalid_rate: float = 0.05
) -> list[str]:
    """Plain statements read off the measured rows (no number here is typed in by hand).

    Every MAE is read against chance first: a model is *learnt* when its MAE is at most
    :data:`~pipeline.evaluate.yardsticks.CLEARLY_BELOW_CHANCE` × chance on every cross-dataset
    set, and two models are compared only when both are learnt. MAE is over valid answers only,
    so rankings leave out candidates with more than ``max_invalid_rate`` invalid answers on a
    test set (the registry's gate does the same).
    """
    out: list[str] = []
    sets = inputs.headpose_sets
    measured = [r for r in rows if r["kind"] != "chance" and r["mean_mae"] is not None]
    valid = [r for r in measured if _worst_invalid(r, sets) <= max_invalid_rate]
    learnt = [r for r in valid if r["learnt"]]
    if inputs.chance:
        chance = ", ".join(f"{_set_label(s)} {_fmt(inputs.chance_mae(s))}°" for s in inputs.all_sets)
        out.append(f"Chance (always the training median): {chance}.")
    for r in valid:
        state = "learnt" if r["learnt"] else f"**not clearly below chance** (> {CLEARLY_BELOW_CHANCE}×)"
        out.append(f"{r['name']}: MAE / chance {_ratios(r, inputs.all_sets)}: {state}.")
    if learnt:
        best = min(learnt, key=lambda r: r["mean_mae"])
        out.append(
            f"Lowest mean cross-dataset MAE among learnt models (at most {100 * max_invalid_rate:.0f}% invalid "
            f"answers): **{best['name']}** ({best['mean_mae']:.2f}°)."
        )
    baseline = next((r for r in valid if r["kind"] == "baseline"), None)
    vlms = [r for r in valid if r["kind"] != "baseline"]
    if baseline and vlms:
        top = min(vlms, key=lambda r: r["mean_mae"])
        if baseline["learnt"] and top["learnt"]:
            change = 100 * (top["mean_mae"] - baseline["mean_mae"]) / baseline["mean_mae"]
            word = "lower" if change < 0 else "higher"
            out.append(
                f"Best VLM candidate {top['name']} vs the CNN baseline: {abs(change):.1f}% {word} mean MAE "
                f"({top['mean_mae']:.2f}° vs {baseline['mean_mae']:.2f}°)."
            )
        else:
            out.append(
                f"No VLM-vs-baseline comparison: {top['name'] if not top['learnt'] else baseline['name']} "
                "is not clearly below chance."
            )
    for r in measured:
        if r["blank_mae"] is not None and r[IN_DOMAIN]["mae"] is not None and inputs.chance_mae(IN_DOMAIN):
            c = inputs.chance_mae(IN_DOMAIN)
            # Depends on the image: blank frames score clearly worse than the real ones (and no
            # better than about chance). Whether it also *learnt* is the ratio above.
            looks = r["blank_mae"] >= max(0.9 * c, 1.1 * r[IN_DOMAIN]["mae"])
            verdict = (
                "its answers depend on the image"
                if looks
                else "**its answers do not depend on the image** (blank frames score as well)"
            )
            out.append(
                f"{r['name']} on blank images: MAE {r['blank_mae']:.2f}° vs {r[IN_DOMAIN]['mae']:.2f}° on the "
                f"real held-out frames (chance {c:.2f}°): {verdict}."
            )
    base = next((r for r in rows if r["kind"] == "base"), None)
    if base and base["grounding"]:
        for r in rows:
            if r["kind"] in ("lora", "merged") and r["grounding"] is not None:
                kept = r["grounding"] / base["grounding"]
                drop = base["grounding"] - r["grounding"]
                verb = "lost" if tolerance is not None and drop > tolerance else "kept"
                out.append(
                    f"{r['name']} {verb} grounding: acc@0.5 {r['grounding']:.2f} vs base {base['grounding']:.2f} "
                    f"({100 * kept:.0f}% of base)."
                )
    out += _layer_wta_claim(rows, inputs, max_invalid_rate)
    for r in rows:
        worst = _worst_invalid(r, sets)
        if r["kind"] not in ("baseline", "chance") and worst > max_invalid_rate:
            out.append(f"{r['name']} gives invalid head-pose answers on {100 * worst:.0f}% of a test set.")
    return out


def _layer_wta_claim(rows: list[dict[str, Any]], inputs: ReportInputs, max_invalid_rate: float) -> list[str]:
    """The paper's claim, checked: layer_wta's MAE is at most the best single adapter's."""
    wta = next((r for r in rows if r["name"] == "merge:layer_wta"), None)
    adapters = [r for r in rows if r["kind"] == "lora" and r["mean_mae"] is not None and r["learnt"]]
    adapters = [r for r in adapters if _worst_invalid(r, inputs.headpose_sets) <= max_invalid_rate]
    if wta is None or wta["mean_mae"] is None or not adapters:
        return []
    best = min(adapters, key=lambda r: r["mean_mae"])
    if not wta["learnt"]:
        return ["layer_wta vs the adapters: not compared (layer_wta is not clearly below chance)."]
    holds = wta["mean_mae"] <= best["mean_mae"]
    return [
        f"Paper's claim (layer_wta has the lowest error of the adapters it merges): "
        f"{'reproduced' if holds else 'not reproduced'}: layer_wta {wta['mean_mae']:.2f}° vs "
        f"{best['name']} {best['mean_mae']:.2f}°."
    ]


def _markdown(
    inputs: ReportInputs,
    rows: list[dict[str, Any]],
    made: Mapping[str, Path | None],
    title: str,
    grounding_tolerance: float | None,
    notes: Sequence[str],
    max_invalid_rate: float,
) -> str:
    """The report's markdown (links the figures in ``made``)."""
    md = [f"# {title}", ""]
    md += [f"> {n}" for n in notes] + ([""] if notes else [])
    md += ["## What the numbers show", ""]
    found = findings(rows, inputs, grounding_tolerance, max_invalid_rate) + keypoint_findings(inputs.keypoints)
    md += [f"* {f}" for f in found] or ["* No scored candidate yet."]
    md += [
        "",
        "## Head pose: in-domain and cross-dataset (trained on 300W-LP)",
        "",
        "MAE in degrees over valid answers. *Chance* always answers the training median; "
        "× chance is MAE / chance per cross-dataset set; the blank-image MAE asks the 300W-LP "
        "held-out questions on uniform grey frames (at or above chance: the answers depend on the image). "
        "*Italic rows are published figures, not measured here*.",
        "",
    ]
    md += headpose_table(inputs, rows)
    md += ["", *(f"*{c}*" for c in PUBLISHED_CLAIMS), ""]
    if made["bins"]:
        md += ["## MAE by angle bin", "", "![MAE by yaw bin](figures/mae_by_yaw_bin.png)", ""]
    if made["tradeoff"]:
        md += [
            "## Grounding vs head pose",
            "",
            "Each candidate's grounding accuracy on held-out crops against its mean head-pose MAE: plain "
            "LoRA fine-tuning trades grounding away; a good merge keeps both.",
            "",
            "![trade-off](figures/grounding_vs_headpose.png)",
            "",
        ]
    md += _decision_section(inputs.decisions, made["decisions"] is not None)
    if made["invalid"]:
        md += [
            "## Invalid answers",
            "",
            "Answers that do not parse are counted, never repaired; they are "
            f"kept verbatim under `{layout.invalid_answers_dir()}/`.",
            "",
            "![invalid](figures/invalid_answers.png)",
            "",
        ]
    if made["curves"]:
        md += ["## Training curves", "", "![curves](figures/training_curves.png)", ""]
    md += _registry_section(inputs.registry)
    md += _keypoint_section(inputs.keypoints, made.get("scenes") is not None)
    return "\n".join(md) + "\n"


def render(
    inputs: ReportInputs,
    out_dir: Path,
    *,
    title: str = "HPE pipeline report",
    grounding_tolerance: float | None = None,
    notes: Sequence[str] = (),
    max_invalid_rate: float = 0.05,
) -> Path:
    """Write ``out_dir/report.md`` and ``out_dir/figures/`` (each replaced atomically); returns the md path.

    ``out_dir`` holds other stages' outputs too (``reports/``), so only these two are replaced.
    """
    rows = headpose_rows(inputs)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir / "figures") as figs:
        made = {
            "bins": plot_bins(inputs, figs / "mae_by_yaw_bin.png"),
            "tradeoff": plot_tradeoff(rows, figs / "grounding_vs_headpose.png"),
            "decisions": plot_decisions(inputs.decisions, figs / "layer_wta_decisions.png"),
            "invalid": plot_invalid(rows, inputs.headpose_sets, figs / "invalid_answers.png"),
            "curves": plot_curves(inputs.curves, figs / "training_curves.png"),
            "scenes": plot_keypoint_scenes(inputs.keypoints, figs / "keypoint_ap_by_scene.png"),
        }
    write_text_atomic(
        out_dir / "report.md", _markdown(inputs, rows, made, title, grounding_tolerance, notes, max_invalid_rate)
    )
    return out_dir / "report.md"


def _decision_section(decisions: Mapping[str, Any], has_plot: bool) -> list[str]:
    if not decisions:
        return []
    md = [
        "## Merge decisions",
        "",
        "| method | params | groups | combined | won by task 0 | won by task 1 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for method, rec in decisions.items():
        ds = rec["decisions"]
        md.append(
            f"| {method} | `{json.dumps(rec['params'])}` | {len(ds)} | "
            f"{sum(d['action'] == 'combine' for d in ds)} | "
            f"{sum(d['action'] == 'winner' and d['winner'] == 0 for d in ds)} | "
            f"{sum(d['action'] == 'winner' and d['winner'] == 1 for d in ds)} |"
        )
    md.append("")
    if has_plot:
        md += [
            "![layer_wta decisions](figures/layer_wta_decisions.png)",
            "",
            "Every group's decision (similarity, winner) is in `models/merged/<method>/merge_decisions.json`.",
            "",
        ]
    return md


def _registry_section(registry: Mapping[str, Any] | None) -> list[str]:
    if not registry:
        return []
    md = [
        f"## Model registry (`{registry['model_name']}`)",
        "",
        f"Champion: version {registry.get('champion') or '— (none passed the gate)'}.",
        "",
        "| candidate | version | promoted | gate |",
        "|---|---:|---|---|",
    ]
    md += [
        f"| {d['candidate']} | {d['version']} | {'yes' if d['promoted'] else 'no'} | {d['reason']} |"
        for d in registry["decisions"]
    ]
    return [*md, ""]


def _keypoint_section(keypoints: Mapping[str, Mapping[str, Any]], has_plot: bool = False) -> list[str]:
    if not keypoints:
        return []
    domains = sorted({d for m in keypoints.values() for d in m.get("domains", {})})
    md = [
        "## Keypoints (VLPose): COCO AP per domain",
        "",
        "| model | " + " | ".join(f"{d} AP" for d in domains) + " |",
        "|---|" + "---:|" * len(domains),
    ]
    for name, m in keypoints.items():
        md.append(
            f"| {name} | "
            + " | ".join(
                _fmt(
                    100 * m["domains"][d]["AP"]
                    if d in m.get("domains", {}) and m["domains"][d].get("AP") is not None
                    else None,
                    2,
                )
                for d in domains
            )
            + " |"
        )
    for name, figures in PUBLISHED_KEYPOINTS.items():
        md.append(f"| *{name}* | " + " | ".join(f"*{figures[d]:.2f}*" if d in figures else "—" for d in domains) + " |")
    md += ["", "AP in %, ground-truth boxes; *italic rows are published figures, not measured here*.", ""]
    records = keypoint_records(keypoints)
    if records:
        md += ["| model | domain | boxes | " + " | ".join(KEYPOINT_STATS) + " |", "|---|---|---|" + "---:|" * 4]
        for r in records:
            md.append(
                f"| {r['model']} | {r['domain']} | {r['boxes']} | "
                + " | ".join(_fmt(r[k]) for k in KEYPOINT_STATS)
                + " |"
            )
        md.append("")
    if has_plot:
        md += ["![AP by scene](figures/keypoint_ap_by_scene.png)", ""]
    return md


def report_stage(params: Any, root: Path = Path("."), out_dir: Path = layout.REPORTS) -> dict[str, Any]:
    """The ``report`` stage: collect the metrics under ``root``, render, attach to MLflow."""
    inputs = collect(root, params.evaluate.headpose_sets)
    notes = []
    if params.vlm.checkpoint is None:
        notes.append(
            "Embedded default: synthetic datasets in the real formats and tiny models trained from "
            "scratch on CPU. The numbers show the pipeline working, not the papers' accuracy; published "
            "figures are shown for reference only."
        )
    path = render(
        inputs,
        root / out_dir,
        grounding_tolerance=params.registry.grounding_tolerance,
        notes=notes,
        max_invalid_rate=params.registry.max_invalid_rate,
    )
    summary: dict[str, Any] = {
        "report": str(path),
        "candidates": len(inputs.candidates),
        "figures": sorted(p.name for p in (path.parent / "figures").glob("*.png")),
    }
    if params.tracking.enabled:
        import mlflow

        from pipeline.tracking import mlflow_run

        with mlflow_run(params.tracking, "report", tags={"stage": "report"}) as run:
            mlflow.log_artifact(str(path))
            mlflow.log_artifacts(str(path.parent / "figures"), "figures")
            summary["mlflow_run_id"] = run.info.run_id
    return summary
