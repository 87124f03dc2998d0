"""The course report opens with a headline table of the whole course, read from results.json."""
from helpers import report
from helpers.config import record
from helpers.runtime import SETTINGS


def test_headline_values_are_readable():
    assert report.headline_value({"accuracy": 0.93, "low": 0.89, "high": 0.962, "n": 184}) \
        == "0.930 [0.890, 0.962] (n=184)"
    assert report.headline_value({"mean": 0.95, "std": 0.01, "seeds": 3, "ci95_first_seed": [0.9, 0.97]}) \
        == "0.950 ± 0.010 over 3 seeds, 95% CI [0.900, 0.970] (first seed)"
    assert report.headline_value({"mean": 0.95, "std": None, "seeds": 1}) == "0.950"
    paired = report.headline_value({"difference": 0.03, "low": -0.01, "high": 0.07, "p_mcnemar": 0.0412,
                                    "p_paired_bootstrap": 0.05})
    assert paired == "+0.030 [-0.010, +0.070]; McNemar p = 0.0412, paired bootstrap p = 0.05"
    tiny = report.headline_value({"difference": 0.11, "low": 0.07, "high": 0.15, "p_mcnemar": 1.7e-8,
                                  "p_paired_bootstrap": 0.0})
    assert tiny == "+0.110 [+0.070, +0.150]; McNemar p < 0.001, paired bootstrap p < 0.001"
    assert report.headline_value({"0": {"mean": 0.7}, "16": {"mean": 0.81}}) == "k=0: 0.700 · k=16: 0.810"
    assert report.headline_value(1.4567) == "1.457" and report.headline_value("e5-en") == "e5-en"


def test_lookup_tolerates_missing_notebooks_and_keys():
    results = {"notebooks": {"07_evaluation": {"results": {"best_model": "e5-en"}}}}
    assert report.lookup(results, "07_evaluation", ("best_model",)) == "e5-en"
    assert report.lookup(results, "07_evaluation", ("calibration", "e5-en", "ece_before")) is None
    assert report.lookup(results, "05_cross_domain", ("transfer_drop_mean", "en")) is None
    assert report.lookup({}, "03_pretraining_mlm_nsp", ("val_mlm_accuracy",)) is None


def test_every_headline_names_a_course_notebook():
    stages = {stage for stage, *_ in report.HEADLINES}
    assert {"pretraining", "in-domain", "cross-domain", "cross-lingual", "calibration"} <= stages
    assert all(notebook[:2] in {"03", "04", "05", "06", "07"} for _, _, notebook, _ in report.HEADLINES)


def test_report_opens_with_the_headline_table(tmp_path, monkeypatch):
    monkeypatch.setattr(SETTINGS, "build", tmp_path)
    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    record("03_pretraining_mlm_nsp", "smoke", val_mlm_accuracy=0.4125, unigram_baseline=0.05)
    record("07_evaluation", "smoke", best_model="e5-en",
           accuracy={"e5-en": {"course en": {"accuracy": 0.93, "low": 0.89, "high": 0.96, "n": 184}}},
           calibration={"e5-en": {"temperature": 1.8, "ece_before": 0.061, "ece_after": 0.024}})
    page = report.write_report().read_text(encoding="utf-8")
    glance, per_notebook = page.index("The course at a glance"), page.index("Every recorded result")
    assert glance < per_notebook
    table = page[glance:per_notebook]
    assert "0.412" in table and "0.930 [0.890, 0.960] (n=184)" in table and "1.800" in table
    assert "03_pretraining_mlm_nsp (smoke)" in table
    assert "not recorded" in table  # notebooks 04-06 have not run in this build dir
    assert page.count("<tr>") > len(report.HEADLINES)
