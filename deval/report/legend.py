"""One line under every report: what each metric means and which direction is better."""

from __future__ import annotations

PROFILE = ("e-score: mean largest P_token per step (calibrated = P_task's largest; higher = more one-hot) · "
           "ATVD: mean TV(P_token, P_task) per step (lower is better) · result TVD: TV of a run's sampled counts "
           "to P_task (lower is better) · on-set mass: next-token mass on the items (higher is better) · "
           "volatility: step-to-step TV (lower = steadier) · extremity: 0 calibrated, 1 one-hot · verdict: "
           "alignment (ATVD) and stability (volatility) between the ideal E and one-hot D references · "
           "intervals: 95% t over runs")
SWEEP = ("per temperature: e-score (calibrated = P_task's largest), ATVD and result TVD (lower is better), on-set "
         "mass (higher is better); measured = sampled at T, derived = re-tempered from the T=1 run")
CALIBRATION = ("precision |S∩V|/|S| and recall |S∩V|/|V| of the kept set S against the valid tokens V (higher is "
               "better; the oracle scores 1, 1) · validity mass and AUROC (higher is better) · valid, distinct, "
               "coverage of the sampled answers (higher is better)")
DIVERSITY = ("distinct valid outputs after n samples (higher is better; the ideal uniform sampler is the ceiling) · "
             "P(valid): exact probability a sample is valid (higher is better) · unexplored: mass the exact "
             "enumeration pruned (lower is better)")
COMPARE = ("difference = B - A of the per-run values, 95% Welch interval over runs; significant when the "
           "Holm-adjusted p across the task's metrics is below 0.05 · lower is better for ATVD, result TVD, "
           "volatility; higher for on-set mass")
LAYERS = ("per layer, the layer's output through the model's final norm and unembedding (logit lens): on-set mass "
          "(higher = the items are already the answer), e-score (calibrated = P_task's largest), ATVD (lower is "
          "better), volatility (lower = steadier); the last layer is the model's own distribution · "
          "intervals: 95% t over runs")
BY_FAMILY = {"deval.profile": PROFILE, "deval.sweep": SWEEP, "deval.calibration": CALIBRATION,
             "deval.diversity": DIVERSITY, "deval.layers": LAYERS}


def legend_for(schema) -> str:
    return BY_FAMILY.get(str(schema or "").split("/")[0], "")
