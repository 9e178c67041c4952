from netcompress.pipeline.compare_arch import plot_compare
from netcompress.pipeline.report import plot_size_vs_accuracy
from netcompress.plots import pyplot, save_figure

PNG = b"\x89PNG\r\n\x1a\n"


def test_save_figure_writes_a_whole_png_and_closes_the_figure(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "sub" / "line.png")
    assert out.read_bytes().startswith(PNG)
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in out.parent.iterdir()] == ["line.png"]  # no temporary file left


def test_the_report_plots_use_it(tmp_path):
    rows = [{"architecture": "standard", "val_accuracy": 0.5, "params": 1000},
            {"architecture": "depthwise", "val_accuracy": 0.6, "params": 300}]
    assert plot_compare(rows, tmp_path / "compare.png").read_bytes().startswith(PNG)
    artifacts = [{"name": "a", "stage": "student", "file_bytes": 200_000, "val_accuracy": 0.6},
                 {"name": "b", "stage": "prune", "file_bytes": 90_000, "val_accuracy": 0.55}]
    out = plot_size_vs_accuracy(artifacts, tmp_path / "size.png", chosen=("b",))
    assert out.read_bytes().startswith(PNG)
    assert not pyplot().get_fignums()


def drawn(monkeypatch, plot, *args, **kwargs):
    """The axes a report plot draws, captured before it is saved and closed."""
    import netcompress.pipeline.report as report

    captured = []
    monkeypatch.setattr(report, "save_figure", lambda fig, out: captured.append(fig) or out)
    plot(*args, **kwargs)
    pyplot().close(captured[0])
    return captured[0].axes[0]


def test_the_size_plot_shows_every_point_and_keeps_its_labels_apart(monkeypatch, tmp_path):
    artifacts = [{"name": "a", "stage": "student", "file_bytes": 200_000, "val_accuracy": 0.6},
                 {"name": "f", "stage": "lowrank", "file_bytes": 150_000, "val_accuracy": 0.07, "candidate": False}]
    ax = drawn(monkeypatch, plot_size_vs_accuracy, artifacts, tmp_path / "size.png")
    low, high = ax.get_ylim()
    assert low <= 0.07 <= high  # the hollow "not a candidate" point lies inside the axis
    assert "Pareto frontier" not in [t.get_text() for t in ax.get_legend().get_texts()]  # a frontier of one model is no line: the legend does not name it
    budget, note = (next(t for t in ax.texts if key in t.get_text()) for key in ("300,000 bytes", "standard error"))
    assert budget.get_position()[1] == high and note.get_position()[1] < 0.5  # the limit's label at the top


def test_the_latency_plot_names_a_frontier_only_when_it_draws_one(monkeypatch, tmp_path):
    from netcompress.pipeline.report import plot_latency_vs_accuracy

    points = [{"name": "a", "stage": "s", "ms": 0.2, "val_accuracy": 0.6},
              {"name": "b", "stage": "s", "ms": 0.1, "val_accuracy": 0.5}]
    for shown, expected in ((points[:1], False), (points, True)):
        ax = drawn(monkeypatch, plot_latency_vs_accuracy, shown, tmp_path / "lat.png", "ort", target_ms=0.15)
        names = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any(n.startswith("frontier") for n in names) == expected
