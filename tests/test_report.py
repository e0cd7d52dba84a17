import json
import re

import numpy as np
from conftest import chromium, run_cli
from PIL import Image

from imgtrain.analysis import plots
from imgtrain.analysis.evaluate import PREDICTIONS
from imgtrain.analysis.report import FIGURES


def test_every_plot_is_a_real_png(mnist_run):
    out, proc = mnist_run
    assert f"report: {out / 'report.html'}" in proc.stdout
    for name in FIGURES:
        path = out / f"{name}.png"
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width >= 400 and im.height >= 250, (name, im.size)
            assert np.asarray(im.convert("L")).std() > 5, f"{name}.png is blank"


def test_top_losses_are_only_mistakes(mnist_run):
    out, _ = mnist_run
    with np.load(out / PREDICTIONS) as z:
        probs, y = z["probs"], z["y"]
    worst = plots.top_losses(probs, y, 24)
    assert len(worst) == 24 and (probs[worst].argmax(1) != y[worst]).all()
    true_p = probs[worst, y[worst]]
    assert (np.diff(true_p) >= 0).all(), "highest loss first"
    fig = plots.misclassified(np.zeros((24, 28, 28, 1), np.uint8), y[worst], probs[worst], [str(i) for i in range(10)])
    titles = plots.captions(fig)
    assert len(titles) == 24
    for t in titles:
        label, pred = re.match(r"label : (\S+)\npred : (\S+) \(", t).groups()
        assert label != pred


def test_the_heatmaps_section_shows_the_worst_mistakes_then_one_right_image_per_class(mnist_run):
    """Rows: the 8 highest-loss mistakes (evidence for the predicted and for the true class, two different maps),
    then the most confident right image of each class; the figure is in report.html."""
    from imgtrain.core.backend import use_backend

    use_backend("tensorflow")
    from imgtrain.analysis.report import _heatmaps, read_run
    from imgtrain.data import run_dataset

    out, _ = mnist_run
    run = read_run(out)
    with np.load(out / PREDICTIONS) as z:
        probs, y, pos = z["probs"], z["y"], z["positions"]
    worst = plots.top_losses(probs, y, 8)
    fig = _heatmaps(run, run_dataset(run.config), probs, y, pos, worst)
    titles = plots.captions(fig)
    assert len(titles) == 3 * 18
    firsts = titles[0::3]
    assert firsts[:8] == [f"wrong: {y[i]}" for i in worst] and firsts[8:] == [f"right: {c}" for c in range(10)]
    assert all(t == "true = pred" for t in titles[2::3][8:])
    assert all(t.startswith("true ") and t != "true = pred" for t in titles[2::3][:8])
    maps = [im.get_array() for im in fig.axes[0].get_images() if im.get_gid() == "overlay"][:16]  # the mistakes'
    assert len(maps) == 16 and all(not np.array_equal(maps[k], maps[k + 1]) for k in range(0, 16, 2))
    assert "<h2>Why: heatmaps</h2>" in (out / "report.html").read_text()


def test_misclassified_grid_says_when_there_are_none():
    probs = np.eye(3)[[0, 1, 2]]
    fig = plots.misclassified(np.zeros((3, 8, 8, 3), np.uint8), np.array([0, 1, 2]), probs, ["a", "b", "c"])
    assert any("no misclassified" in t.get_text() for ax in fig.axes for t in ax.texts)


def test_report_renders_in_headless_chromium(mnist_run, tmp_path):
    out, _ = mnist_run
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(FIGURES), "all plots embedded"
    assert not re.search(r'(src|href)="(https?:)?//', page), "self-contained: nothing fetched from elsewhere"
    driver = chromium(tmp_path / "profile", 1280, 2400)
    try:
        driver.get((out / "report.html").as_uri())
        widths = driver.execute_script(
            "return Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth, i.naturalHeight]);"
        )
        assert sorted(w[0] for w in widths) == sorted(FIGURES)
        assert all(done and w > 0 and h > 0 for _, done, w, h in widths), widths
        metrics = driver.execute_script("return document.querySelector('table.metrics').innerText;")
        accuracy = json.loads((out / "metrics.json").read_text())["test_accuracy"]
        assert "test accuracy" in metrics and f"{accuracy:.4f}" in metrics
        rows = driver.execute_script("return document.querySelectorAll('table.per-class tr').length;")
        assert rows == 11  # header + 10 classes
        driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()
    with Image.open(tmp_path / "report.png") as shot:
        assert shot.width >= 1000 and np.asarray(shot.convert("L")).std() > 10


def test_runs_list_and_compare(tmp_path):
    for name, lr in (("a", "1e-3"), ("b", "3e-3")):
        run_cli(
            "train",
            "--dataset",
            "mnist",
            "--model",
            "mlp",
            "--epochs",
            "2",
            "--train-limit",
            "1500",
            "--lr",
            lr,
            "--no-report",
            "--out",
            tmp_path / "runs" / name,
        )
    assert not (tmp_path / "runs" / "a" / "report.html").exists(), "--no-report skips the report"
    listing = run_cli("runs", "list", "--dir", tmp_path / "runs").stdout.splitlines()
    assert listing[0].split()[:3] == ["run", "dataset", "model"]
    assert [l.split()[0] for l in listing[1:]] == ["a", "b"] and all("mnist" in l and "2/2" in l for l in listing[1:])
    # a folder, or run directories written with --out anywhere, as arguments
    assert run_cli("runs", "list", tmp_path / "runs").stdout.splitlines() == listing
    named = run_cli("runs", "list", tmp_path / "runs" / "b", tmp_path / "runs" / "a").stdout.splitlines()
    assert [l.split()[0] for l in named[1:]] == ["b", "a"]
    missing = run_cli("runs", "list", tmp_path / "nowhere", check=False)
    assert (
        missing.returncode == 2 and missing.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such folder of runs"
    )
    proc = run_cli("runs", "compare", tmp_path / "runs" / "a", tmp_path / "runs" / "b", "--plot", tmp_path / "c.png")
    lr_row = next(l for l in proc.stdout.splitlines() if l.startswith("learning_rate"))
    assert "0.001" in lr_row and "0.003" in lr_row
    assert "test accuracy" in proc.stdout
    with Image.open(tmp_path / "c.png") as im:
        assert im.format == "PNG" and im.width >= 400
    bad = run_cli("runs", "compare", tmp_path / "runs" / "a", check=False)
    assert bad.returncode == 2 and "two or more" in bad.stderr
    # the report of an existing run can be (re)made later
    run_cli("report", tmp_path / "runs" / "a")
    assert (tmp_path / "runs" / "a" / "report.html").is_file()


def test_report_escapes_every_name_that_comes_from_the_data(tmp_path):
    """Class folders, file names and notes come from the user's disk: a folder named like a script must show as
    text in report.html, never run (the page is rendered with Jinja2's autoescape)."""
    from imgtrain.analysis.report import RunRecord, render_html

    evil = "<script>alert(1)</script>"
    scores = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 3}
    run = RunRecord(
        tmp_path / "run",
        {"model": "mlp", "dataset": f"folder:{evil}"},
        {
            "status": "done",
            "data": {
                "class_names": [evil, "b"],
                "notes": [f"skipped: {evil}"],
                "skipped_files": {f"/d/{evil}.png": "not an image"},
            },
        },
        {"test": {"per_class": {evil: scores, "b": scores}}, "test_accuracy": 0.5},
    )
    page = render_html(run, {})
    assert "<script>" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 6  # title, headline, per class, counts, note, file
    assert "<td>0.5000</td>" in page  # floats keep four decimals
