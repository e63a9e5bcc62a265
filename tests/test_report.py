"""`advprune report`: tables and figures from hand-made run directories, missing fields as '–'."""

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from advprune.cli import main
from advprune.core.errors import ConfigError
from advprune.data import get_spec
from advprune.models import architecture, create_model
from advprune.models.serialization import save_model
from advprune.report import format_results, read_run, summarize, write_report
from advprune.report.comparison import compare, comparison_markdown
from advprune.report.table import pretty_eps

CURVE = [
    {"eps": 0.0, "accuracy": 0.8},
    {"eps": 0.1, "accuracy": 0.6},
    {"eps": 0.5, "accuracy": 0.0},
]


def dense_run(root):
    """A finished, evaluated dense run: config, model with zeros in one layer, full results."""
    run = root / "dense"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"dataset": "fashion-mnist", "eps": 0.1}))
    model = create_model(**architecture("lenet300-100", get_spec("fashion-mnist")))
    with torch.no_grad():
        model.body[1].weight[:, :392] = 0  # half of the first layer
    save_model(
        run / "model.safetensors",
        model,
        {
            "architecture": architecture("lenet300-100", get_spec("fashion-mnist")),
            "config": {"dataset": "fashion-mnist"},
            "eps": 0.1,
            "method": {"name": "pgd-at"},
        },
    )
    results = {
        "eps": 0.1,
        "accuracy": {"clean": 0.8056, "fgsm": 0.6968, "pgd": 0.6635, "cw": 0.62, "autoattack": 0.6},
        "examples": {"clean": 10000, "fgsm": 10000, "pgd": 10000, "cw": 10000, "autoattack": 64},
        "attacks": {"pgd": {"description": "PGD-20 on cross-entropy"}},
        "params": 266610,
        "nonzero_params": 148010,
        "flops": 532000,
        "sparsity": 0.4403,
        "method": "pgd-at",
        "model": "lenet300-100",
        "dataset": "fashion-mnist",
        "gradient_masking_check": {"security_curve": CURVE, "passed": True},
    }
    (run / "results.json").write_text(json.dumps(results))
    return run


def pruned_run(root):
    """A pruned run with no model file, ANP-VS-style extra fields, and fields missing or broken."""
    run = root / "anpvs"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"dataset": "fashion-mnist", "model": "x"}))
    results = {
        "accuracy": {"clean": 0.81, "pgd": "n/a", "transfer": 0.7},  # pgd is malformed
        "examples": {"clean": 10000, "transfer": 10000},
        "eps": 0.1,
        "method": "anpvs",
        "model": "lenet300-100",
        "sparsity": 0.9,
        "unit_sparsity": 0.75,
        "nonzero_params": 266610,  # the gated network's; the exported one's count below
        "complexity": {"exported": {"params": 30000, "nonzero_params": 26661, "flops": 60000}},
        "memory_fraction": 0.11,
        "flops_speedup": 8.9,
        "latency": {"unit": "ms", "batch_1": {"dense": 1.0, "exported": 0.25, "speedup": 4.0}},
        "channel_sparsity": 0.8,
        "measured_speedup": {"batch_128": {"median": 3.5, "min": 3.0, "max": 4.25}},
        "vulnerability": {"overall": 0.0171, "per_layer": {"body.1": 0.02, "body.3": 0.01}},
    }
    (run / "results.json").write_text(json.dumps(results))
    return run


def markdown_rows(text):
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]
    return [dict(zip(header, row, strict=True)) for row in rows]


def test_report_of_two_runs_has_their_rows_columns_and_figures(tmp_path):
    dense, pruned = dense_run(tmp_path), pruned_run(tmp_path)
    out = tmp_path / "out"
    report = write_report([dense, pruned], out)

    with open(out / "report.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["run"] for row in rows] == ["dense", "anpvs"]
    assert list(rows[0])[:27] == [
        "run",
        "method",
        "dataset",
        "model",
        "eps",
        "sparsity",
        "unit_sparsity",
        "params",
        "nonzero_params",
        "flops",
        "latency_ms",
        "memory_fraction",
        "flops_speedup",
        "clean",
        "fgsm",
        "pgd",
        "cw",
        "autoattack",
        "transfer",
        "clean_examples",
        "fgsm_examples",
        "pgd_examples",
        "cw_examples",
        "autoattack_examples",
        "transfer_examples",
        "vulnerability",
        "masking_check_passed",
    ]  # fmt: skip  (new columns come after these)
    new = {"worst_case", "autoattack_ci_low", "latency_ratio_b128_max", "at_chance"}
    assert new | {"channel_sparsity", "speedup_1", "speedup_128"} <= set(rows[0])
    assert rows[0]["method"] == "pgd-at" and float(rows[0]["pgd"]) == 0.6635
    assert rows[0]["autoattack_examples"] == "64" and rows[0]["masking_check_passed"] == "True"
    assert rows[1]["dataset"] == "fashion-mnist"  # from config.yaml: results.json lacks it
    assert float(rows[1]["unit_sparsity"]) == 0.75 and float(rows[1]["latency_ms"]) == 0.25
    assert float(rows[1]["speedup_128"]) == 3.5 and rows[1]["speedup_1"] == ""
    assert float(rows[1]["vulnerability"]) == 0.0171 and float(rows[1]["transfer"]) == 0.7
    assert (rows[1]["params"], rows[1]["nonzero_params"], rows[1]["flops"]) == (
        "30000", "26661", "60000"
    )  # fmt: skip
    assert rows[1]["pgd"] == rows[1]["cw"] == rows[1]["autoattack"] == ""  # malformed or missing

    table = markdown_rows(report.read_text())
    assert [row["run"] for row in table] == ["dense", "anpvs"]
    assert table[0]["PGD (N=10000)"] == "66.35"  # the whole test set: no interval shown
    aa = table[0]["AutoAttack (N=64)"]
    low, high = map(float, aa.removeprefix("60.00/64 [").rstrip("]").split(","))
    assert low < 60 < high and high - low > 15  # 64 examples: a wide interval
    assert table[0]["params ≠ 0"] == "148k" and table[0]["masking check"] == "passed"
    assert table[1]["PGD (N=10000)"] == table[1]["CW (N=10000)"] == "–"
    assert table[1]["AutoAttack (N=64)"] == "–"
    assert table[1]["FLOPs"] == "60k" and table[1]["latency b1 × dense"] == "0.25"
    assert table[0]["latency b1 × dense"] == "–"  # no latency in its results
    assert table[1]["masking check"] == "–" and table[1]["unit sparsity"] == "75.0%"
    assert table[1]["channel sparsity"] == "80.0%" and table[1]["speed-up b1"] == "–"
    assert table[1]["speed-up b128"] == "3.50× (3.00–4.25)"
    assert table[1]["transfer (N=10000)"] == "70.00" and table[1]["vulnerability"] == "0.017"

    text = report.read_text()
    for figure in (
        "robust_vs_sparsity",
        "robust_vs_speedup",  # the pruned run's transfer accuracy at its measured speed-up
        "security_curves",
        "layer_sparsity",
        "layer_vulnerability",
    ):
        path = out / f"{figure}-fashion-mnist_lenet300-100.png"
        assert path.read_bytes().startswith(b"\x89PNG"), figure
        assert f"]({path.name})" in text


def test_per_layer_sparsity_is_read_from_the_model_file(tmp_path):
    from advprune.report.runs import layer_sparsity

    sparsity = layer_sparsity(dense_run(tmp_path))
    assert sparsity["body.1"] == pytest.approx(0.5)
    assert sparsity["body.3"] == 0 and sparsity["body.5"] == 0
    assert layer_sparsity(pruned_run(tmp_path)) == {}


def test_runs_with_only_a_config_are_listed_apart_as_not_finished(tmp_path):
    dense_run(tmp_path)
    run = tmp_path / "training"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"dataset": "cifar10", "model": "vgg16"}))
    report = write_report([tmp_path], tmp_path / "out")  # a folder holding runs
    assert [row["run"] for row in markdown_rows(report.read_text())] == ["dense"]
    assert "## Not finished" in report.read_text() and "training" in report.read_text()
    assert "training" not in (tmp_path / "out" / "report.csv").read_text()
    alone = write_report([run], tmp_path / "alone")
    assert markdown_rows(alone.read_text()) == [] and "1 run(s) hold no model" in alone.read_text()


def test_every_accuracy_says_its_number_of_examples(tmp_path):
    """Runs evaluated on the same 200 test images: the header says N=200 (the CSV alone did);
    runs on different numbers: each cell says its own."""
    for name, count in (("a", 200), ("b", 200), ("c", 500)):
        run = tmp_path / name
        run.mkdir()
        results = {
            "accuracy": {"clean": 0.8, "pgd": 0.5},
            "examples": {"clean": count, "pgd": count},
            "method": "pgd-at",
        }
        (run / "results.json").write_text(json.dumps(results))
    same = markdown_rows(write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "s").read_text())
    assert same[0]["clean (N=200)"] == "80.00" and same[1]["PGD (N=200)"] == "50.00"
    mixed = markdown_rows(write_report([tmp_path], tmp_path / "m").read_text())
    assert [row["PGD"] for row in mixed] == ["50.00/200", "50.00/200", "50.00/500"]


def test_summary_reads_results_before_model_metadata_before_config(tmp_path):
    run = dense_run(tmp_path)
    summary = read_run(run)
    assert (summary.method, summary.model, summary.eps) == ("pgd-at", "lenet300-100", 0.1)
    assert summary.security_curve == CURVE
    (run / "results.json").unlink()
    summary = read_run(run)  # the model file's metadata, then config.yaml
    assert (summary.method, summary.model, summary.dataset) == (
        "pgd-at", "lenet300-100", "fashion-mnist"
    )  # fmt: skip
    assert summary.accuracy == {} and summary.sparsity is None


@pytest.mark.parametrize(
    ("latency", "ms"),
    [
        (0.5, 0.5),
        ({"ms": 0.5}, 0.5),
        ({"batch_1": {"dense": 2.0}}, 2.0),
        ({"batch_1": {"model": 3.0, "layout": "nchw"}}, 3.0),
        ("fast", None),
    ],
)
def test_latency_in_the_shapes_results_hold_it(latency, ms):
    assert summarize({"latency": latency}).latency_ms == ms


def test_cli_report_and_its_errors(tmp_path, capsys):
    dense = dense_run(tmp_path)
    assert main(["report", str(dense), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "report.md").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    out = ["--out", str(tmp_path / "p")]
    for args in (
        [str(tmp_path / "nope"), *out],  # no such directory
        [str(empty), *out],  # no run in it
        [str(dense), "--out", str(dense / "config.yaml")],  # --out is a file
    ):
        assert main(["report", *args]) == 2
        error = capsys.readouterr().err
        assert error.startswith("advprune: error: ") and error.count("\n") == 1, error


def test_find_runs_rejects_a_folder_without_runs(tmp_path):
    with pytest.raises(ConfigError, match="no run directory"):
        write_report([tmp_path], tmp_path / "out")


def test_console_table_marks_subsets_and_missing_attacks():
    table = format_results(
        [
            {
                "run": "runs/x",
                "eps": 0.1,
                "params": 10,
                "sparsity": 0.5,
                "accuracy": {"clean": 0.5, "autoattack": 0.25},
                "examples": {"clean": 100, "autoattack": 40},
            }
        ]
    )
    row = table.splitlines()[2]
    assert "runs/x" in row and "50.0%" in row and "25.00  /40" in row and row.count("–") == 3


def test_paper_comparison_gives_the_difference_per_cell(tmp_path):
    runs = {"at": read_run(dense_run(tmp_path)), "anpvs": read_run(pruned_run(tmp_path))}
    rows = {
        "at": {"clean": 80.0, "memory": 100},
        "anpvs": {"clean": 82.0, "pgd": 50.0, "memory": 10.0, "unit_sparsity": 70.0},
    }
    comparisons = {(c.step, c.metric): c for c in compare(rows, runs, reference="at")}
    assert comparisons["at", "clean"].difference == pytest.approx(0.56)
    assert comparisons["at", "memory"].ours == 100  # the reference itself
    assert comparisons["anpvs", "memory"].ours == pytest.approx(11)  # its own memory_fraction
    runs["anpvs"].memory_fraction = None  # then: its parameters ≠ 0 against the reference's
    assert compare(rows, runs, "at")[-2].ours == pytest.approx(100 * 26661 / 148010)
    assert comparisons["anpvs", "unit_sparsity"].difference == pytest.approx(5.0)
    assert comparisons["anpvs", "pgd"].ours is None  # malformed in the run's results
    table = comparison_markdown(list(comparisons.values()))
    assert "80.56 / 80.00 (+0.56)" in table and "– / 50.00" in table


def test_pretty_eps():
    assert pretty_eps(8 / 255) == "8/255" and pretty_eps(0.1) == "0.1" and pretty_eps(0.3) == "0.3"


# ------------------------------------------------------------------------------------- figures

LONG_ANPVS = (
    "anpvs [finetune_attack_steps=3, finetune_batch_size=128, beta=10.0, vs_lambda=1.0, "
    "gate_lr=0.2, conv_gate_init=-1.0, dense_gate_init=3.0]"
)


def figure_run(root, name, method, sparsity, pgd, examples, **extra):
    """A LeNet-5-Caffe run: its model (every other weight of the first conv zero), results."""
    run = root / name
    run.mkdir()
    spec = get_spec("fashion-mnist")
    model = create_model(**architecture("lenet5-caffe", spec))
    with torch.no_grad():
        model.body[0].weight.view(-1)[::2] = 0
    metadata = {"architecture": architecture("lenet5-caffe", spec), "method": {"label": method}}
    save_model(run / "model.safetensors", model, {**metadata, "config": {"dataset": spec.name}})
    results = {
        "eps": 0.1,
        "method": method,
        "sparsity": sparsity,
        "accuracy": {"clean": 0.8, "pgd": pgd, "autoattack": pgd - 0.01},
        "examples": {"clean": examples, "pgd": examples, "autoattack": 32},
        "gradient_masking_check": {"security_curve": CURVE, "passed": True, "examples": 100},
        "vulnerability": {"overall": 0.02, "per_layer": {"body.3": 0.01, "body.0": 0.03}},
        **extra,
    }
    results["vulnerability"]["attack"] = "pgd"
    (run / "results.json").write_text(json.dumps(results))
    return run


def drawn_figures(monkeypatch, runs, out):
    """Write the report of `runs`, keeping what each figure shows before it is saved."""
    from advprune.report import plots

    seen = {}
    save = plots.save_figure

    def keep(figure, path):
        axes = [a for a in figure.axes if a.get_xlabel() or a.has_data()]
        legends = [*figure.legends, *(a.get_legend() for a in axes if a.get_legend())]
        seen[Path(path).name.split("-")[0]] = {
            "legend": [t.get_text() for legend in legends for t in legend.get_texts()],
            "axes": axes,
            "text": " ".join(
                [figure.get_suptitle()]
                + [f"{a.get_title()} {a.get_xlabel()} {a.get_ylabel()}" for a in axes]
            ),
            "colours": {  # an errorbar's label is on its container
                bars.get_label(): bars.lines[0].get_color() for a in axes for bars in a.containers
            },
        }
        return save(figure, path)

    monkeypatch.setattr(plots, "save_figure", keep)
    write_report(runs, out)
    return seen


def test_figures_can_be_read(tmp_path, monkeypatch):
    """The demo's figures could not be read: a legend of full method labels over the data, an
    axis offset ("+9.8999e1"), a 0.3 pp accuracy range filling the axis, body.0 for conv1."""
    speedup = {"measured_speedup": {"batch_128": {"median": 1.3, "min": 1.2, "max": 1.4}}}
    runs = [
        figure_run(tmp_path, "dense", "pgd-at", 0.0, 0.573, 100),
        figure_run(tmp_path, "anpvs", LONG_ANPVS, 0.99, 0.5725, 100, channel_sparsity=0.8,
                   **speedup),
        figure_run(tmp_path, "mad-99", "mad [saliency_fraction=0.25]", 0.9899, 0.4, 25),
        figure_run(tmp_path, "mad-999", "mad [saliency_fraction=0.25]", 0.999, 0.3, 25),
    ]  # fmt: skip
    seen = drawn_figures(monkeypatch, runs, tmp_path / "out")
    assert set(seen) == {
        "robust_vs_sparsity", "robust_vs_speedup", "security_curves", "layer_sparsity",
        "layer_vulnerability",
    }  # fmt: skip
    for name, figure in seen.items():
        assert figure["legend"] and all(len(label) <= 36 for label in figure["legend"]), name
        for axes in figure["axes"]:
            assert axes.get_xlabel() and axes.get_ylabel(), name
            assert axes.xaxis.get_major_formatter().get_offset() == "", name
        if name != "layer_sparsity":  # weights, not test examples
            assert "N=" in figure["text"], name
    for name in ("robust_vs_sparsity", "robust_vs_speedup", "security_curves"):
        for axes in seen[name]["axes"]:  # 0-100 %, a marker's width to spare
            low, high = axes.get_ylim()
            assert -3 < low <= 0 and 100 <= high < 103, name
    assert seen["robust_vs_speedup"]["axes"][0].get_xlim()[0] == 0
    sparsity = seen["robust_vs_sparsity"]
    assert "PGD, N=100 (mad: 25)" in sparsity["text"]
    assert {"mad", "anpvs (channels)", "dense pgd-at"} <= set(sparsity["legend"])
    ticks = [t.get_text() for t in seen["layer_sparsity"]["axes"][0].get_xticklabels()]
    assert ticks == ["conv1", "conv2", "fc1", "fc2"]
    ticks = [t.get_text() for t in seen["layer_vulnerability"]["axes"][0].get_xticklabels()]
    assert ticks == ["conv1", "conv2"]  # network order, not the results' order
    mad = sparsity["colours"]["mad"]
    assert seen["security_curves"]["colours"]["mad-99"] == mad
    assert seen["layer_sparsity"]["colours"]["mad-999"] == mad
    assert seen["security_curves"]["colours"]["anpvs"] != mad


@pytest.mark.parametrize("methods", [3, 12])
def test_each_method_keeps_a_colour_no_other_method_has(methods):
    """The suite has twelve pruning methods: more than tab10's ten colours."""
    from advprune.report.plots import method_colours
    from advprune.report.runs import RunSummary

    names = [f"method{i:02d}" for i in range(methods)]
    runs = [RunSummary(Path(name), method=name) for name in names]
    runs.append(RunSummary(Path("dense"), method="pgd-at"))
    colours = method_colours(runs)
    assert len({colours[name] for name in names}) == methods
    assert colours["pgd-at"] not in {colours[name] for name in names}
