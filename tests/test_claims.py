"""Claim verdicts and seed summaries of a report, on constructed results tables (one row per
cell and seed, as report.collect writes them)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from common.intervals import Interval
from simulation.claims import CLAIMS, evaluate_claims
from simulation.report import (add_strongest, claims_section, estimates, figures,
                               markdown_table, overstatement_text, study_tables, summarize)
from simulation.studies import STUDIES
from simulation.tables import estimates_with_bounds

IMAGES = 1000


def runs(cell: str, seeds: dict[int, dict], **config) -> list[dict]:
    """One finished row per seed: config columns plus that seed's accuracies."""
    base = {"cell": cell, "status": "finished", "adversarial": True, "activation": "relu",
            "schedule": "fixed", "partition": "iid", "share": 0.0, "objective": "mixed",
            "sharing": "raw", "eval_examples": IMAGES, **config}
    return [{**base, "seed": s, **acc} for s, acc in seeds.items()]


def acc(natural, fgsm_noise, strongest):
    return {"natural_acc": natural, "fgsm_noise_acc": fgsm_noise, "pgd20_acc": strongest,
            "strongest": strongest, "strongest_attack": "pgd20_acc",
            "protocol_overstatement": fgsm_noise - strongest}


def table(*groups: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([row for group in groups for row in group])


def verdicts(frame: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    return {(r["claim"], r["measure"], r["compared with"]): r["verdict"]
            for _, r in frame.iterrows()}


AT_CLAIM = "Adversarial training raises robustness over no AT"
RELU_CLAIM = "With a fixed learning rate ReLU is best overall"


def three_seeds():
    """ReLU+AT above no AT in every seed (by 0.08-0.10 under the strongest attack, though
    both spread more than that over the seeds: pairing by seed is what shows it); TeLU
    clearly above ReLU in natural accuracy; their strongest-attack accuracies within each
    other's spread."""
    relu = runs("relu", {0: acc(0.30, 0.20, 0.14), 1: acc(0.31, 0.21, 0.10),
                         2: acc(0.32, 0.22, 0.18)})
    no_at = runs("no-at", {0: acc(0.34, 0.10, 0.05), 1: acc(0.35, 0.11, 0.02),
                           2: acc(0.36, 0.12, 0.08)}, adversarial=False)
    telu = runs("telu", {0: acc(0.40, 0.21, 0.16), 1: acc(0.41, 0.22, 0.12),
                         2: acc(0.42, 0.23, 0.15)}, activation="telu")
    return table(relu, no_at, telu)


def test_claim_verdicts_over_seeds_are_paired_by_seed():
    found = verdicts(evaluate_claims(three_seeds()))
    assert found == {
        (AT_CLAIM, "fgsm_noise_acc", "no-at"): "reproduced",
        (AT_CLAIM, "strongest", "no-at"): "reproduced",
        (RELU_CLAIM, "natural_acc", "telu"): "contradicted",
        # -0.01 in every seed, but 1 point on the same 1,000 test images is within their
        # sampling error, which seeds do not average away
        (RELU_CLAIM, "fgsm_noise_acc", "telu"): "inconclusive",
        (RELU_CLAIM, "strongest", "telu"): "inconclusive",
    }
    row = evaluate_claims(three_seeds()).iloc[0]
    assert row["difference"].kind == "t+newcombe" and row["difference"].n == 3


def test_claim_verdicts_with_one_seed_use_the_evaluation_images():
    relu = runs("relu", {0: acc(0.30, 0.20, 0.140)})
    no_at = runs("no-at", {0: acc(0.34, 0.19, 0.060)}, adversarial=False)
    found = evaluate_claims(table(relu, no_at))
    # 140 vs 60 of 1,000 robust: far apart; 200 vs 190 under the protocol: within noise
    assert verdicts(found) == {(AT_CLAIM, "fgsm_noise_acc", "no-at"): "inconclusive",
                               (AT_CLAIM, "strongest", "no-at"): "reproduced"}
    assert set(d.kind for d in found["difference"]) == {"newcombe"}
    # the same difference on 50 images (7 vs 3) is within the noise
    small = table(relu, no_at).assign(eval_examples=50)
    assert verdicts(evaluate_claims(small))[(AT_CLAIM, "strongest", "no-at")] \
        == "inconclusive"


def test_an_unfinished_run_has_no_strongest_attack_and_breaks_no_report():
    # Its row holds no accuracy at all (pandas' idxmin refuses an all-NaN row).
    table = pd.DataFrame([{"cell": "done", "status": "finished", "fgsm_noise_acc": 0.2,
                           "pgd20_acc": 0.12, "cw20_acc": 0.10},
                          {"cell": "stopped", "status": "stopped", "fgsm_noise_acc": None,
                           "pgd20_acc": None, "cw20_acc": None}])
    table = add_strongest(table)
    assert table["strongest_attack"].iloc[0] == "cw20_acc"
    assert pd.isna(table["strongest_attack"].iloc[1])
    assert table["protocol_overstatement"].iloc[0] == pytest.approx(0.10)
    assert pd.isna(table["strongest"].iloc[1])


def test_a_claim_needs_exactly_one_expected_cell():
    relu = runs("relu", {0: acc(0.30, 0.20, 0.14)})
    no_at = runs("no-at", {0: acc(0.34, 0.10, 0.05)}, adversarial=False)
    twin = runs("relu-noise-off", {0: acc(0.31, 0.20, 0.14)}, train_noise=0.0)
    assert evaluate_claims(table(relu, no_at, twin)).empty  # two AT ReLU cells: ambiguous
    assert evaluate_claims(table(no_at)).empty  # no claimed cell at all
    assert "No pair of this sweep's cells" in "\n".join(claims_section(table(no_at)))


def test_the_sharing_claim_compares_the_paper_recipe_with_itself():
    """In the objectives study, 'sharing recovers robustness' is mixed + 40% against mixed
    without sharing, never against another objective's cell; the CalFAT claim takes that."""
    shared = runs("mixed-0.4", {0: acc(0.30, 0.20, 0.14)}, partition="classes", share=0.4)
    alone = runs("mixed-0.0", {0: acc(0.28, 0.18, 0.10)}, partition="classes")
    calfat = runs("calfat-0.0", {0: acc(0.29, 0.19, 0.11)}, partition="classes",
                  objective="calfat")
    means = runs("means-0.0", {0: acc(0.27, 0.17, 0.09)}, partition="classes", sharing="means")
    rows = evaluate_claims(table(shared, alone, calfat, means))  # means: the sharing study's
    compared = rows.groupby("claim")["compared with"].agg(set).to_dict()
    assert compared == {"Sharing 40% of G recovers robustness (classes)": {"mixed-0.0"},
                        "The paper's recipe with 40% sharing beats CalFAT without sharing "
                        "(classes)": {"calfat-0.0"}}


def test_every_declared_claim_can_be_matched():
    # A typo in a selector (a column collect does not write) would silently never apply.
    columns = {"adversarial", "activation", "schedule", "partition", "share", "objective",
               "sharing"}
    for claim in CLAIMS:
        assert set(claim.expected) <= columns and set(claim.other) <= columns, claim.text
        assert claim.measures and set(claim.measures) <= {"natural_acc", "fgsm_noise_acc",
                                                           "strongest"}


def test_summary_and_tables_show_intervals_over_seeds_or_images():
    summary = summarize(three_seeds())
    assert summary["cell"].tolist() == ["relu", "no-at", "telu"]
    assert summary["seeds"].tolist() == [3, 3, 3]
    relu = summary.iloc[0]
    assert isinstance(relu["natural_acc"], Interval) and relu["natural_acc"].kind == "t+wilson"
    assert relu["natural_acc"].estimate == pytest.approx(0.31)
    # overstatement: paired per seed (0.06, 0.11, 0.04), not the difference of two means
    assert relu["protocol_overstatement"].estimate == pytest.approx(0.07)
    # sd of (0.06, 0.11, 0.04) = 0.036056; t(2) = 4.302653: 0.089567, widened by Newcombe's
    # 0.033194 for the means 0.21 and 0.14 over 1,000 images
    assert relu["protocol_overstatement"].half_width == pytest.approx(
        math.hypot(0.089567, 0.033194), abs=1e-5)
    assert "seed" not in summary and "run" not in summary
    (title, frame), = study_tables(STUDIES["grid"], summary)
    text = markdown_table(frame)
    # t(2) 4.30 * 0.01 / sqrt(3) = 2.48 and Wilson's 2.86 for 310 of 1,000, in quadrature
    assert "| relu |" in text and "31.0 ± 3.8" in text

    one = summarize(three_seeds().query("seed == 0"))
    assert one.iloc[0]["natural_acc"].kind == "wilson"
    assert "30.0 [27.2, 32.9]" in markdown_table(study_tables(STUDIES["grid"], one)[0][1])
    assert one.iloc[0]["protocol_overstatement"].kind == "newcombe"


def test_overstatement_text_counts_the_cells_whose_interval_excludes_zero():
    text = overstatement_text(summarize(three_seeds()))
    # relu: 0.06, 0.11, 0.04 (mean 0.07, t half-width 0.09: holds 0); no-at: 0.05, 0.09,
    # 0.04 (holds 0); telu: 0.05, 0.10, 0.08 (mean 0.077 +- 0.063: above 0)
    assert "In 1 of 3 cells the 95% interval" in text and "in 2 it holds 0" in text
    assert "overstates robust accuracy by" in text


def test_figures_are_drawn_from_the_means_over_seeds(tmp_path):
    summary = estimates(summarize(three_seeds()))
    assert summary["natural_acc"].tolist() == pytest.approx([0.31, 0.35, 0.41])
    made = figures(STUDIES["activation"], summary, pd.DataFrame(), tmp_path)
    assert [p.name for p in made] == ["natural_vs_robust_by_activation.png"]
    assert made[0].stat().st_size > 10_000


def test_figures_get_each_mean_with_its_interval_bounds(tmp_path):
    summary = summarize(three_seeds())
    bounded = estimates_with_bounds(summary)
    for column in ("natural_acc", "fgsm_noise_acc"):
        for i, interval in enumerate(summary[column]):
            assert bounded[f"{column}_low"].iloc[i] == interval.low < interval.estimate
            assert bounded[f"{column}_high"].iloc[i] == interval.high > interval.estimate
    assert "cell_low" not in bounded  # only columns that hold intervals get bounds
    made = figures(STUDIES["activation"], bounded, pd.DataFrame(), tmp_path)
    assert [p.name for p in made] == ["natural_vs_robust_by_activation.png"]
    made = figures(STUDIES["objectives"], bounded, pd.DataFrame(), tmp_path)
    assert [p.name for p in made] == ["natural_vs_robust_by_objective.png"]
    assert made[0].stat().st_size > 10_000
