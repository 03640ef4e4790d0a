"""#28: the pictures say what they show, and nothing in them hides anything else.

Each figure is drawn by cnncli.plots as the commands draw it; the matplotlib figure is kept (instead of closed) so
that its axes, legend and labels can be read, and the PNG is written as the commands write it.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from cnncli import plots
from cnncli.engine.events import EpochResult


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw, kept readable after they are written (as the commands write them)."""
    kept = []
    save = plots._save

    def keep(fig, path, dpi=100):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        save(fig, path, dpi)  # written (and closed) as the commands do
        FigureCanvasAgg(fig).draw()  # then given a canvas again, to measure what was drawn
        kept.append(fig)

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def _box(artist, fig):
    return artist.get_window_extent(fig.canvas.get_renderer())


def test_curves_keep_a_loss_spike_readable_and_the_legend_off_the_lines(figures, tmp_path):
    losses = [9.0, 0.5, 0.3, 0.2, 0.15, 0.1]  # one spike, then the curve that matters
    history = [EpochResult(i + 1, v, 0.9 + i / 100, v, 0.95 + i / 100, 0.1, 100.0, 1.0) for i, v in enumerate(losses)]
    plots.plot_curves(history, str(tmp_path / "curves.png"), "run")
    fig = figures[0]
    loss, accuracy = fig.axes
    assert loss.get_yscale() == "log" and "log" in loss.get_title()
    legend = fig.legends[0] if fig.legends else accuracy.get_legend()
    assert not _box(legend, fig).overlaps(_box(accuracy, fig))  # below the panels, never over the lines at 1.0
    assert not _box(legend, fig).overlaps(_box(loss, fig))


def test_the_confusion_colours_say_they_are_shares_of_each_true_class(figures, tmp_path):
    plots.plot_confusion([[5, 1], [2, 8]], ["a", "b"], str(tmp_path / "c.png"), "confusion")
    colorbar = figures[0].axes[-1]
    assert "true class" in colorbar.get_ylabel()


def test_a_kernel_grid_that_shows_part_of_a_layer_says_which_part(figures, tmp_path):
    facts = plots.plot_kernels(torch.randn(64, 64, 3, 3), str(tmp_path / "k.png"), title="layer2.0.conv1")
    fig = figures[0]
    title = fig._suptitle.get_text()
    assert facts["shown"] == 16 and facts["in_channels_shown"] == 8
    assert "first 16 of 64 kernels" in title and "first 8 of 64 input channels" in title
    top = max(_box(ax.title, fig).y1 for ax in fig.axes if ax.get_title())
    assert _box(fig._suptitle, fig).y0 >= top  # the title sits above the column labels, not over them


def test_a_score_map_of_a_tall_image_has_no_wide_margins(figures, tmp_path):
    img = torch.full((3, 200, 60), 128, dtype=torch.uint8)
    scores = torch.softmax(torch.randn(2, 6, 2), 0)
    facts = {"stride": [32, 32], "receptive_field": [32, 32], "offset": [0, 0], "training_size": [3, 32, 32]}
    path = tmp_path / "map.png"
    plots.render_overlay(img, scores, facts, ["a", "b"], str(path))
    pixels = np.asarray(Image.open(path).convert("L"))
    content = np.argwhere(pixels < 250)  # everything that is not white paper
    (y0, x0), (y1, x1) = content.min(0), content.max(0)
    h, w = pixels.shape
    assert y0 + (h - 1 - y1) < 0.1 * h and x0 + (w - 1 - x1) < 0.1 * w
