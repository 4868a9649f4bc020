"""The replication benchmark's statistics and report: per-cohort summaries of the pooled
out-of-fold predictions, the pooled comparison over cohorts, a markdown table and a forest plot.

Sessions of one subject are not independent, so every CI here resamples *subjects* (cluster
bootstrap) and every test uses the clustered (Obuchowski) form of DeLong's test. Cohorts are
independent of each other: the pooled difference over cohorts is their inverse-variance
weighted mean (fixed effect), with the count of cohorts whose difference is positive beside it.

The command is :mod:`Training.commands.benchmark`; the protocol it runs is a committed preset
file whose sha256 the report records (:data:`PROTOCOL_PRESET`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from Training.metrics import EvalConfig, compare_paired, evaluate_predictions

#: The frozen protocol: the committed preset the benchmark runs (Training/presets/<name>.yaml).
PROTOCOL_PRESET = "protocol"
#: Cohort seeds reserved for development (tuning, debugging, examples). A confirmation run
#: uses seeds outside this range, chosen before the run and never tuned on.
DEVELOPMENT_SEEDS = range(1000, 2000)
#: The comparisons each cohort reports: (name, model a, model b); ΔAUC = AUC(a) - AUC(b).
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("student - baseline", "student", "baseline"),
    ("light - baseline", "light", "baseline"),
    ("light - student", "light", "student"),
    # the regional read-outs: PET guidance on one read-out (only the target differs), and the
    # regional read-out against the slice model trained on the same labels
    ("distilled - regional", "regional_distilled", "regional"),
    ("centiloid - regional", "regional_centiloid", "regional"),
    ("regional - baseline", "regional", "baseline"),
)
#: Display names of the phases.
MODEL_LABELS = {"teacher": "teacher (MRI+PET)", "student": "student (distilled, MRI)",
                "baseline": "baseline (MRI only)", "light": "light student (CNN, MRI)",
                "regional_teacher": "regional teacher (MRI+PET)",
                "regional": "regional read-out (MRI only)",
                "regional_distilled": "regional, distilled from PET (MRI)",
                "regional_centiloid": "regional, Centiloid target (MRI)"}
_Z95 = 1.959963984540054


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (the protocol preset's identity in a report)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def is_development_seed(seed: int) -> bool:
    """Whether ``seed`` lies in the development range (not a confirmation cohort)."""
    return int(seed) in DEVELOPMENT_SEEDS


def summarize_cohort(pooled: Mapping[str, Any], evaluation: EvalConfig) -> dict[str, Any]:
    """AUC per model and the paired ΔAUCs of one cohort's pooled out-of-fold predictions.

    ``pooled`` holds ``labels``, ``subjects`` (one per case) and ``probabilities`` (phase ->
    array). Each AUC carries a subject-cluster bootstrap CI; each comparison the cluster
    bootstrap CI and the clustered DeLong (Obuchowski) SE, CI and p-value.
    """
    labels = np.asarray(pooled["labels"], dtype=int)
    subjects = [str(s) for s in pooled["subjects"]]
    probabilities = {p: np.asarray(v, dtype=float) for p, v in pooled["probabilities"].items()}
    models = {}
    for phase, probs in probabilities.items():
        auc = evaluate_predictions(labels, probs, evaluation.default_threshold, evaluation,
                                   groups=subjects)["auc"]
        models[phase] = {"auc": auc["value"], "ci_low": auc["ci_low"], "ci_high": auc["ci_high"]}
    comparisons = {}
    for name, a, b in COMPARISONS:
        if a not in probabilities or b not in probabilities:
            continue
        result = compare_paired(labels, probabilities[a], probabilities[b], evaluation, (a, b),
                                groups=subjects)
        clustered, boot = result["delong"], result["bootstrap"]
        comparisons[name] = {
            "model_a": a, "model_b": b, "difference": float(boot["difference"]),
            "ci_low": float(boot["ci_low"]), "ci_high": float(boot["ci_high"]),
            "se": float(clustered["se"]), "p_value": float(clustered["p_value"]),
            "delong_ci_low": float(clustered["ci_low"]), "delong_ci_high": float(clustered["ci_high"]),
            "fraction_a_better": float(boot["fraction_a_better"])}
    return {"n_cases": int(labels.size), "n_subjects": len(set(subjects)),
            "n_positive_cases": int(labels.sum()), "models": models, "comparisons": comparisons}


def pool_differences(differences: Sequence[float], ses: Sequence[float]) -> dict[str, Any]:
    """Fixed-effect (inverse-variance) pooled difference of independent cohorts.

    Returns the weighted mean with its SE and 95 % CI, the plain mean, the number of cohorts
    with a positive difference, Cochran's Q and I² (how much the cohorts disagree beyond
    their own uncertainty). A cohort with a zero or undefined SE is left out of the weights.
    """
    d = np.asarray(differences, dtype=float)
    se = np.asarray(ses, dtype=float)
    usable = np.isfinite(d) & np.isfinite(se) & (se > 0)
    out: dict[str, Any] = {"n_cohorts": int(d.size), "n_positive": int(np.sum(d > 0)),
                           "mean": float(np.mean(d)) if d.size else math.nan}
    if not usable.any():
        out.update(pooled=math.nan, se=math.nan, ci_low=math.nan, ci_high=math.nan, q=math.nan,
                   i2=math.nan, p_value=math.nan)
        return out
    w = 1.0 / se[usable] ** 2
    pooled = float(np.sum(w * d[usable]) / np.sum(w))
    pooled_se = float(math.sqrt(1.0 / np.sum(w)))
    q = float(np.sum(w * (d[usable] - pooled) ** 2))
    dof = int(usable.sum()) - 1
    i2 = float(max(0.0, (q - dof) / q)) if q > 0 and dof > 0 else 0.0
    from scipy.stats import norm

    out.update(pooled=pooled, se=pooled_se, ci_low=pooled - _Z95 * pooled_se,
               ci_high=pooled + _Z95 * pooled_se, q=q, i2=i2,
               p_value=float(2 * norm.sf(abs(pooled / pooled_se))))
    return out


def pool_cohorts(cohorts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every comparison pooled over cohorts (see :func:`pool_differences`), plus the mean
    AUC of each model over cohorts."""
    pooled: dict[str, Any] = {"comparisons": {}, "mean_auc": {}}
    for name, _, _ in COMPARISONS:
        rows = [c["summary"]["comparisons"][name] for c in cohorts
                if name in c["summary"]["comparisons"]]
        if rows:
            pooled["comparisons"][name] = pool_differences([r["difference"] for r in rows],
                                                           [r["se"] for r in rows])
    phases = {p for c in cohorts for p in c["summary"]["models"]}
    for phase in sorted(phases, key=list(MODEL_LABELS).index):
        values = [c["summary"]["models"][phase]["auc"] for c in cohorts
                  if phase in c["summary"]["models"]]
        pooled["mean_auc"][phase] = float(np.mean(values))
    return pooled


def _ci(value: float, low: float, high: float, digits: int = 3) -> str:
    if not all(math.isfinite(v) for v in (value, low, high)):
        return "n/a"
    return f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _auc(row: Mapping[str, float]) -> str:
    if not math.isfinite(row["auc"]):
        return "n/a"
    return f"{row['auc']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def markdown_report(result: Mapping[str, Any]) -> str:
    """The benchmark's report as markdown: what was run, per-cohort table, pooled table."""
    cohorts = result["cohorts"]
    phases = [p for p in MODEL_LABELS if any(p in c["summary"]["models"] for c in cohorts)]
    lines = [f"# Replication benchmark ({result['kind']})", "",
             f"- Protocol: `{result['protocol']['path']}` sha256 `{result['protocol']['sha256'][:16]}…`"
             + (" **modified by --set overrides**" if result["protocol"]["overrides"] else ""),
             f"- Synthetic cohort generator version {result['generator_version']}; "
             f"{result['subjects']} subjects per cohort; {result['folds']}-fold subject-level CV; "
             f"MRI effect scale {result['mri_effect_scale']:g}",
             f"- Cohort seeds: {', '.join(str(c['seed']) for c in cohorts)} "
             f"(development range {DEVELOPMENT_SEEDS.start}-{DEVELOPMENT_SEEDS.stop - 1})",
             "- CIs resample subjects (cluster bootstrap); p-values: clustered DeLong (Obuchowski).",
             "", "## Per cohort", "",
             "| seed | subjects / cases | oracle AUC | probe AUC | feature probe AUC | "
             + " | ".join(MODEL_LABELS[p] + " AUC" for p in phases)
             + " | student − baseline ΔAUC [95 % CI] | p | minutes |",
             "| --- " * (5 + len(phases) + 3) + "|"]
    for c in cohorts:
        s = c["summary"]
        comparison = s["comparisons"].get("student - baseline")
        ceilings = c.get("ceilings", {})
        lines.append(
            f"| {c['seed']} | {s['n_subjects']} / {s['n_cases']} | "
            f"{format_number(ceilings.get('oracle_auc'))} | {format_number(ceilings.get('probe_auc'))} | "
            f"{format_number(ceilings.get('feature_probe_auc'))} | "
            + " | ".join(_auc(s["models"][p]) if p in s["models"] else "n/a" for p in phases)
            + (f" | {_ci(comparison['difference'], comparison['ci_low'], comparison['ci_high'])} | "
               f"{comparison['p_value']:.3f}" if comparison else " | n/a | n/a")
            + f" | {c['seconds'] / 60:.1f} |")
    lines += ["", "### Per fold", "",
              "AUC of each fold's own test subjects (the pooled AUCs above mix folds whose "
              "calibrations differ, which can lower them):", ""]
    for c in cohorts:
        per_fold = c["summary"].get("fold_auc") or {}
        for phase in phases:
            if per_fold.get(phase):
                values = ", ".join(format_number(v) for v in per_fold[phase])
                lines.append(f"- {c['seed']} {MODEL_LABELS[phase]}: {values} "
                             f"(mean {format_number(float(np.mean(per_fold[phase])))})")
    lines += ["", "## Over cohorts", "",
              "| comparison | cohorts with Δ > 0 | mean Δ | pooled Δ [95 % CI] | p | I² |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, row in result["pooled"]["comparisons"].items():
        lines.append(f"| {name} | {row['n_positive']} of {row['n_cohorts']} | {row['mean']:+.3f} | "
                     f"{_ci(row['pooled'], row['ci_low'], row['ci_high'])} | {format_number(row['p_value'])} | "
                     f"{format_number(row['i2'], 2)} |")
    lines += ["", "Mean AUC over cohorts: " + ", ".join(
        f"{MODEL_LABELS[p]} {v:.3f}" for p, v in result["pooled"]["mean_auc"].items()), "",
        "## Reading", "", *reading(result), ""]
    if result.get("figure"):
        lines += [f"![forest plot]({result['figure']})", ""]
    return "\n".join(lines)


def format_number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def student_baseline_verdict(ci_low: float, ci_high: float) -> str:
    """What a student − baseline ΔAUC CI says, in words (the benchmark's and the demo's reading)."""
    if ci_low > 0:
        return "the distilled student ranks cases better than the MRI-only baseline"
    if ci_high < 0:
        return "the distilled student ranks cases worse than the MRI-only baseline"
    return ("no difference between the distilled student and the MRI-only baseline can be seen: "
            "the CI includes 0")


#: Half-width of the equivalence margin for the light student (ΔAUC vs the distilled student).
EQUIVALENCE_MARGIN = 0.03
#: The rungs a model is measured against: (ceilings key, words).
READ_OUTS = (("regional_auc", "regional read-out"), ("probe_auc", "pixel probe"),
             ("feature_probe_auc", "feature probe"))


def distance_lines(aucs: Mapping[str, float], ceilings: Mapping[str, Any]) -> list[str]:
    """Each MRI-only model's AUC with its distance to the oracle and to the best read-out of
    the ladder (all numbers from the arguments)."""
    oracle = ceilings.get("oracle_auc")
    reads = [(ceilings.get(key), words) for key, words in READ_OUTS
             if isinstance(ceilings.get(key), (int, float)) and math.isfinite(ceilings[key])]
    best = max(reads, default=None)
    out = []
    for phase in MODEL_LABELS:
        if phase not in aucs or "teacher" in phase or phase == "regional":
            continue
        auc = aucs[phase]
        text = f"- {MODEL_LABELS[phase]}: AUC {auc:.3f}"
        if isinstance(oracle, (int, float)):
            text += f", {auc - oracle:+.3f} from the oracle ({oracle:.3f})"
        if best is not None:
            text += f", {auc - best[0]:+.3f} from the best read-out ({best[1]}, {best[0]:.3f})"
        out.append(text + ".")
    return out


def light_equivalence(row: Mapping[str, float], light_lows: Sequence[float],
                      student_lows: Sequence[float]) -> str:
    """Whether light ≈ student can be claimed: its ΔAUC CI inside ±:data:`EQUIVALENCE_MARGIN`
    *and* both models above chance (every cohort's AUC CI above 0.5)."""
    inside = (row["ci_low"] >= -EQUIVALENCE_MARGIN and row["ci_high"] <= EQUIVALENCE_MARGIN)
    above = bool(light_lows) and bool(student_lows) and min(light_lows) > 0.5 and min(student_lows) > 0.5
    if inside and above:
        return "equivalent within ±0.03 (CI inside the margin, both above chance)"
    reasons = []
    if not inside:
        reasons.append(f"its CI is not inside ±{EQUIVALENCE_MARGIN:g}")
    if not above:
        reasons.append("at least one of the two is not clearly above chance in every cohort")
    return "equivalence not shown: " + " and ".join(reasons)


def reading(result: Mapping[str, Any]) -> list[str]:
    """Plain-language sentences that say what the pooled numbers show (and do not show)."""
    out = []
    cohorts = result["cohorts"]
    for name, a, b in COMPARISONS:
        row = result["pooled"]["comparisons"].get(name)
        if not row or not math.isfinite(row["pooled"]):
            continue
        if row["ci_low"] > 0:
            verdict = f"{MODEL_LABELS[a]} ranks cases better than {MODEL_LABELS[b]}"
        elif row["ci_high"] < 0:
            verdict = f"{MODEL_LABELS[a]} ranks cases worse than {MODEL_LABELS[b]}"
        else:
            verdict = "no difference can be seen (the CI includes 0)"
        text = (f"- {name}, pooled over {row['n_cohorts']} cohort(s): ΔAUC {row['pooled']:+.3f} "
                f"(95 % CI {row['ci_low']:+.3f} to {row['ci_high']:+.3f}, half-width "
                f"{(row['ci_high'] - row['ci_low']) / 2:.3f}); {verdict}; {row['n_positive']} of "
                f"{row['n_cohorts']} cohorts positive.")
        if name == "light - student":
            lows = {p: [c["summary"]["models"][p]["ci_low"] for c in cohorts if p in c["summary"]["models"]]
                    for p in ("light", "student")}
            text += " Light vs student: " + light_equivalence(row, lows["light"], lows["student"]) + "."
        out.append(text)
    mean_ceilings = {}
    for key in ("oracle_auc",) + tuple(k for k, _ in READ_OUTS):
        values = [c.get("ceilings", {}).get(key) for c in cohorts]
        values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if values:
            mean_ceilings[key] = float(np.mean(values))
    out.append("- Mean over cohorts, each MRI-only model against the ladder:")
    out += ["  " + line for line in distance_lines(result["pooled"]["mean_auc"], mean_ceilings)]
    if result["kind"] == "development":
        out.append("- At least one seed lies in the development range: this is a development run, "
                   "not a confirmation.")
    out.append("- The cohorts are synthetic (MNI152 template, generated anatomy and PET). The oracle "
               "is the MRI signal the generator put in; the regional read-out is the classic "
               "volumetric peer; the probes are linear read-outs of the prepared slices and of the "
               "frozen encoder's features.")
    return out


def forest_plot(result: Mapping[str, Any], path: str | Path) -> Path:
    """Forest plot: each cohort's ΔAUC with its subject-cluster CI and the pooled estimate,
    one panel per comparison."""
    from Training.report import _new_figure, _save_figure

    names = list(result["pooled"]["comparisons"])
    cohorts = result["cohorts"]
    figure = _new_figure(4.2 * max(1, len(names)), 1.2 + 0.45 * (len(cohorts) + 2))
    axes = figure.subplots(1, max(1, len(names)), sharey=True, squeeze=False)[0]
    labels = [f"seed {c['seed']}" for c in cohorts] + ["pooled"]
    y = np.arange(len(labels))[::-1]
    for ax, name in zip(axes, names):
        for k, c in enumerate(cohorts):
            row = c["summary"]["comparisons"].get(name)
            if row is None:
                continue
            ax.errorbar(row["difference"], y[k], xerr=[[row["difference"] - row["ci_low"]],
                                                       [row["ci_high"] - row["difference"]]],
                        fmt="s", color="tab:blue", capsize=3)
        pooled = result["pooled"]["comparisons"][name]
        if math.isfinite(pooled["pooled"]):
            ax.fill([pooled["ci_low"], pooled["pooled"], pooled["ci_high"], pooled["pooled"]],
                    [y[-1], y[-1] + 0.25, y[-1], y[-1] - 0.25], color="tab:red")
        ax.axvline(0.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set(title=f"ΔAUC {name}", xlabel="ΔAUC (95 % CI, subjects resampled)")
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(labels)
    return _save_figure(figure, path)
