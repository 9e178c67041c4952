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
