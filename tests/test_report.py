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
    assert text.startswith("## Classifier settings compared")
    assert report.settings_section(runs, "note", "fp32 against bf16")[0] == "## fp32 against bf16"


def test_runs_scored_on_a_transfer_set_are_summarised_there_too():
    runs = [run(f"MIRAM_SEED={s} python classify.py", a, 0.9, 5.0) for s, a in ((1, 0.98), (2, 0.96))]
    for r, (a, p) in zip(runs, ((0.70, 0.3), (0.76, 0.5))):
        r["transfer"] = {"auroc": a, "localization": {"evidence": {"pointing_game": p, "mass_inside_over_share_median": 2.0}}}
    runs.append(run("python classify.py --from-scratch", 0.7, 0.1, 1.0))  # no transfer set: a dash
    lines = report.settings_section(runs, "note")
    assert lines[4].endswith("| transfer set, untrained there: AUROC / pointing game |")
    assert "| 0.700 / 0.30 |" in lines[6] and lines[8].endswith("| – |")
    summary = "\n".join(lines).split("MIRAM_SEED")[-1]
    assert "`python classify.py, transfer set` | 2 | 0.730 ± 0.042 | 0.40 ± 0.14 |" in summary
    assert "`python classify.py` | 2 | 0.970 ± 0.014 |" in summary



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
    other = tmp_path / "small"  # a second run of the benchmark, with other classifier settings
    other.mkdir()
    (other / "lesion_limit.md").write_text("| core radius (px) | AUROC |\n|---|---|\n| 3-7 | 0.905 ± 0.012 |\n")
    (other / "lesion_limit.json").write_text(json.dumps({"runs": [], "summary": [], "run": {
        "command": "python bench/lesion_limit.py --cls-img-size 224", "cpu": "a CPU", "cpus": 2, "date": "today"}}))
    report.main(["--outputs", str(out), "--lesion-runs", str(other), "--to", str(tmp_path / "docs" / "RESULTS.md")])
    text = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert "| 3-7 | 0.541 |" in text and "`python bench/lesion_limit.py` on a CPU" in text
    assert text.index("| 3-7 | 0.541 |") < text.index("`python bench/lesion_limit.py --cls-img-size 224` on a CPU") \
        < text.index("| 3-7 | 0.905 ± 0.012 |")


def test_the_transfer_folds_table_is_reported_with_its_command_and_data(tmp_path):
    import json
    folds = tmp_path / "folds"
    folds.mkdir()
    (folds / "transfer_folds.md").write_text("| held-out head | AUROC |\n|---|---|\n| dipy_b0 | 0.612 |\n")
    (folds / "transfer_folds.json").write_text(json.dumps({"runs": [], "heads": [], "data": os.path.join(
        report.ROOT, "data", "transfer", "Brain_MRI"), "run": {
        "command": "python bench/transfer_folds.py", "cpu": "a CPU", "cpus": 2, "date": "today"}}))
    report.main(["--outputs", str(tmp_path / "none"), "--fold-runs", str(folds),
                 "--to", str(tmp_path / "docs" / "RESULTS.md")])
    text = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert "`python bench/transfer_folds.py` on a CPU" in text and "| dipy_b0 | 0.612 |" in text
    assert "- data/transfer/Brain_MRI: the classifier fine-tuned" in text  # the repository's path, not this machine's


def test_runs_differing_only_by_seed_or_folder_are_grouped_whether_set_by_variable_or_flag():
    assert report.settings_of("MIRAM_SEED=2 MIRAM_OUTPUT_PATH=/a python classify.py --n-viz 0") == \
        report.settings_of("python classify.py --n-viz 0 --seed 3 --output-path /b") == "python classify.py --n-viz 0"
    assert report.settings_of("python classify.py --seed=4 --cls-lr 1e-3") == "python classify.py --cls-lr 1e-3"


def test_each_cpu_kinds_saved_run_is_one_row_of_the_table_across_cpus(tmp_path):
    import json
    runs = tmp_path / "runs"

    def demo_run(cpu, minutes, peer_ms):
        out = tmp_path / f"{cpu} {minutes}"
        out.mkdir()
        info = {"command": "python demo.py", "cpu": cpu, "cpus": 2, "date": "today"}
        (out / "demo_summary.json").write_text(json.dumps({
            "total_minutes": minutes, "run": info,
            "phases": [{"phase": "pre-training", "seconds": 60.0}, {"phase": "classification", "seconds": 30.0}],
            "headline": {"margin_over_best_classical_db": 1.5, "auroc": 0.98,
                         "heatmaps": {"evidence": {"pointing_game": 0.9, "median_mass_ratio": 12.0}}}}))
        rows = [{"model": m, "size": "spec", "backend": "ort-int8", "batch": b, "p50_ms": ms, "p90_ms": ms,
                 "images_per_s": ips, "patches_per_image": 64}
                for m, b, ms, ips in (("classifier", 1, 10.0, 100.0), ("classifier", 16, 200.0, 80.0),
                                      ("peer", 1, peer_ms, 50.0), ("peer", 16, 400.0, 40.0))]
        (out / "deploy_benchmark.json").write_text(json.dumps({"results": rows, "run": info, "threads": 2,
                                                            "parity": {}, "accuracy": {}}))
        report.main(["--outputs", str(out), "--runs", str(runs), "--save-run", "--to", str(tmp_path / "R.md")])

    demo_run("Zen 3 (AVX2)", 14.3, 40.0)
    demo_run("Xeon (AVX-512 BF16)", 7.6, 25.0)
    demo_run("Zen 3 (AVX2)", 14.0, 40.0)  # the same CPU again replaces its earlier run
    text = (tmp_path / "R.md").read_text()
    assert text.count("| Zen 3 (AVX2) |") == 1 and "**14.0 min**" in text and "14.3" not in text
    assert "| Xeon (AVX-512 BF16) | **7.6 min** | 1.0 / 0.0 / 0.5 / 0.0 |" in text
    assert "0.25x / 2.0x" in text and "0.40x / 2.0x" in text  # latency and images/s against the peer's


def test_the_training_step_section_gives_each_rows_share_and_the_ceiling_the_matmul_rate_sets():
    step = {"threads": 2, "batch": 16, "gflop_per_image": 10.0, "matmul_gflops": 200.0,
            "bf16_matmul_gflops": 400.0, "ceiling_vs_hf_fp32": {"fp32": 1.6, "bf16": 3.2},
            "throughput": {"hf-fp32": {"median_img_s": 12.5, "best_img_s": 13.0, "ratio_vs_hf_fp32": 1.0,
                                       "share_of_fp32_matmul_peak": 0.625},
                           "miram-bf16 (train.py)": {"median_img_s": 25.0, "best_img_s": 26.0, "ratio_vs_hf_fp32": 2.0,
                                                     "share_of_fp32_matmul_peak": 1.25,
                                                     "share_of_bf16_matmul_peak": 0.625}}}
    text = "\n".join(report.throughput_section(step))
    assert "in bf16 400" in text and "1.60x HF fp32 in fp32 and 3.20x HF fp32 in bf16" in text
    assert "| hf-fp32 | 12.5 | 13.0 | 1.00x | 62% |  |" in text
    assert "| miram-bf16 (train.py) | 25.0 | 26.0 | 2.00x | 125% | 62% |" in text
    # a run saved before the bf16 rate was measured still reports
    old = {k: v for k, v in step.items() if k not in ("bf16_matmul_gflops", "ceiling_vs_hf_fp32")}
    assert "ceiling" not in "\n".join(report.throughput_section(old))
