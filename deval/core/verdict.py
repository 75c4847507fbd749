"""Verdict v2 (our reconstruction; the paper's rule was not available): two axes from every task measured.

alignment: ATVD against P_task; stability: volatility, the mean TV between consecutive P_token. Each is placed
between the null references for the same task, runs and positions (core/references.py): 0 = the ideal E sampler,
1 = the ideal one-hot D sampler. An axis is on the E side when its whole interval lies below halfway, on the D
side when it lies at or above it. E = aligned and stable, D = misaligned and variable (the paper's corners);
"stable but misaligned" and "variable but aligned" are the other two; "format failure" when no task has enough
positions above the minimum on-set mass; "undetermined" when an interval straddles halfway.
"""

from __future__ import annotations

import math

HALFWAY = 0.5  # an axis value nearer the D reference than the E reference is on the D side
POOLED_MATCH = 0.15  # pooled result TVD below which the pooled output "still matches" P_task
MIN_USABLE_SHARE = 0.5  # a task needs at least this share of positions that are not format failures
AXES = (("alignment", "atvd", "ATVD"), ("stability", "volatility", "volatility"))
TYPES = {("E", "E"): "E", ("D", "D"): "D", ("D", "E"): "stable but misaligned", ("E", "D"): "variable but aligned"}
SIDE_WORDS = {"alignment": {"E": "aligned", "D": "misaligned"}, "stability": {"E": "stable", "D": "variable"}}


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _axis(name: str, key: str, label: str, usable: dict[str, dict]) -> dict | None:
    """The axis on the task that places it furthest toward D (the worst task decides)."""
    best = None
    for task, s in usable.items():
        ref = s.get("references", {}).get(key)
        value = s[key]["mean"]
        if ref is None or _nan(value):
            continue
        e, d = ref["E"]["mean"], ref["D"]["mean"]
        if d - e <= 1e-9:
            continue
        lo, hi = s[key]["ci"]
        lo, hi = (value, value) if _nan(lo) or _nan(hi) else (lo, hi)
        place = [(v - e) / (d - e) for v in (value, lo, hi)]
        side = "E" if place[2] < HALFWAY else "D" if place[1] >= HALFWAY else "unclear"
        row = {"axis": name, "metric": label, "task": task, "value": value, "ci": [lo, hi], "E": e, "D": d,
               "position": place[0], "position_ci": place[1:], "side": side}
        if best is None or row["position"] > best["position"]:
            best = row
    return best


def _describe(a: dict) -> str:
    nearer = "D" if a["position"] >= HALFWAY else "E"
    gap = abs(a["value"] - (a["D"] if nearer == "D" else a["E"]))
    return (f"{a['metric']} {a['value']:.2f} [{a['ci'][0]:.2f}, {a['ci'][1]:.2f}] on {a['task']} is nearer the ideal "
            f"{nearer} sampler ({a[nearer]:.2f}, {gap:.2f} away) than the ideal {'E' if nearer == 'D' else 'D'} "
            f"sampler ({a['E' if nearer == 'D' else 'D']:.2f}): {a['position']:.0%} of the way from E to D")


def verdict(task_summaries: dict[str, dict], temperature: float) -> dict:
    """The verdict over every task measured, with a reason line that names the axis that decided it."""
    if not task_summaries:
        return {"type": "undetermined", "extremity": None, "task": None, "reason": "no task was measured",
                "axes": {}}
    usable = {n: s for n, s in task_summaries.items()
              if not _nan(s["atvd"]["mean"]) and 1.0 - s.get("format_failure_rate", 0.0) >= MIN_USABLE_SHARE}
    where = "" if temperature == 1.0 else f" at temperature {temperature:g} (the paper uses 1)"
    first = next(iter(usable or task_summaries))
    extremity = task_summaries.get("flat", task_summaries[first])["extremity"]["mean"]
    base = {"extremity": None if _nan(extremity) else float(extremity), "task": first}
    if not usable:
        rates = ", ".join(f"{s.get('format_failure_rate', float('nan')):.0%} on {n}" for n, s in task_summaries.items())
        mass = ", ".join(f"{s['on_set_mass']['mean']:.0%} on {n}" for n, s in task_summaries.items())
        return {**base, "type": "format failure", "axes": {},
                "reason": f"format decides{where}: positions below the minimum on-set mass ({rates}; mean on-set "
                          f"mass {mass}): the model does not answer in the task's format; try --positions "
                          f"constrained, or a task cue"}
    axes = {name: _axis(name, key, label, usable) for name, key, label in AXES}
    if any(a is None for a in axes.values()):
        return {**base, "type": "undetermined", "axes": axes, "reason": f"no measurable ATVD or volatility{where}"}
    failures = sum(s.get("format_failures", 0) for s in task_summaries.values())
    note = f" ({failures} format-failure positions left out)" if failures else ""
    parts = {n: _describe(a) for n, a in axes.items()}
    sides = (axes["alignment"]["side"], axes["stability"]["side"])
    kind = TYPES.get(sides, "undetermined")
    if kind == "undetermined":
        unclear = [n for n, a in axes.items() if a["side"] == "unclear"]
        deciding = " and ".join(unclear)
        reason = (f"{deciding} undecided{where}: " + "; ".join(
            f"{parts[n]}, its interval straddles halfway" if n in unclear else parts[n] for n in axes))
    else:
        words = [SIDE_WORDS[n][a["side"]] for n, a in axes.items()]
        deciding = "alignment and stability" if kind in ("D", "E") else (
            "alignment" if sides[0] == "D" else "stability")
        reason = f"{deciding} decide{'s' if ' and ' not in deciding else ''}{where}: {words[0]} and {words[1]}; " \
                 + "; ".join(parts.values())
    if kind == "D":  # a D-model can still match P_task in aggregate while every step is nearly one-hot
        s = usable[axes["alignment"]["task"]]
        rtvd = s["pooled_result_tvd"]
        reason += ("; yet the pooled output still matches P_task" if rtvd < POOLED_MATCH else
                   "; and the pooled output is off P_task too") + f" (pooled result TVD {rtvd:.2f})"
    return {**base, "type": kind, "axes": axes, "deciding": deciding, "reason": reason + note}
