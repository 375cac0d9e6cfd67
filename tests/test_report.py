import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import report  # noqa: E402


def run(command, auroc, pointing, mass):
    return {"run": {"command": command}, "auroc": auroc, "default_heatmap": "evidence", "optimizer_steps": 10,
            "localization": {"evidence": {"pointing_game": pointing, "mass_inside_over_share_median": mass}}}


def test_runs_that_differ_by_seed_are_summarised_and_others_are_not():
    runs = [run(f"MIRAM_OUTPUT_PATH=/tmp/s{s} MIRAM_PRESET=demo MIRAM_SEED={s} python classify.py", a, p, 5.0)
            for s, a, p in ((1, 0.90, 0.6), (2, 0.94, 0.8))]
    runs.append(run("MIRAM_PRESET=demo python classify.py --from-scratch", 0.7, 0.1, 1.0))
    text = "\n".join(report.settings_section(runs, "note"))
    assert text.count("| `") == 3 + 1  # every run, then one summary row (the lone run has no spread)
    assert "0.920 ± 0.028" in text and "0.70 ± 0.14" in text  # mean ± sample standard deviation
    summary = text.split("MIRAM_SEED")[-1]
    assert "--from-scratch" not in summary



def test_the_comparison_table_and_plot_are_reported_as_compare_wrote_them(tmp_path):
    import json
    out, docs = tmp_path / "o", tmp_path / "docs"
    out.mkdir()
    (out / "compare.md").write_text("| variant | AUROC |\n|---|---|\n| finetune | 0.912 ± 0.010 |\n")
    (out / "compare.json").write_text(json.dumps({"runs": [], "summary": [], "run": {
        "command": "python bench/compare.py", "cpu": "a CPU", "cpus": 2, "date": "today"}}))
    (out / "compare.png").write_bytes(b"png")
    report.main(["--outputs", str(out), "--to", str(docs / "RESULTS.md")])
    text = (docs / "RESULTS.md").read_text()
    assert "| finetune | 0.912 ± 0.010 |" in text and "`python bench/compare.py` on a CPU" in text
    assert (docs / "compare.png").read_bytes() == b"png" and "(compare.png)" in text


def test_the_lesion_limit_table_is_reported_as_the_benchmark_wrote_it(tmp_path):
    import json
    out = tmp_path / "o"
    out.mkdir()
    (out / "lesion_limit.md").write_text("| core radius (px) | AUROC |\n|---|---|\n| 3-7 | 0.541 |\n")
    (out / "lesion_limit.json").write_text(json.dumps({"runs": [], "summary": [], "run": {
        "command": "python bench/lesion_limit.py", "cpu": "a CPU", "cpus": 2, "date": "today"}}))
    report.main(["--outputs", str(out), "--to", str(tmp_path / "docs" / "RESULTS.md")])
    text = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert "| 3-7 | 0.541 |" in text and "`python bench/lesion_limit.py` on a CPU" in text


def test_runs_differing_only_by_seed_or_folder_are_grouped_whether_set_by_variable_or_flag():
    assert report.settings_of("MIRAM_SEED=2 MIRAM_OUTPUT_PATH=/a python classify.py --n-viz 0") == \
        report.settings_of("python classify.py --n-viz 0 --seed 3 --output-path /b") == "python classify.py --n-viz 0"
    assert report.settings_of("python classify.py --seed=4 --cls-lr 1e-3") == "python classify.py --cls-lr 1e-3"
