import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from replibook import plots  # noqa: E402
from replibook.listing import show, source_of  # noqa: E402


def _example(x: int) -> int:
    """Doubles x."""
    # the comment stays
    return 2 * x


def test_source_of_with_and_without_docstring():
    full = source_of(_example)
    assert full.startswith("def _example(x: int) -> int:") and "Doubles x." in full
    bare = source_of(_example, doc=False)
    assert "Doubles x." not in bare and "# the comment stays" in bare and "return 2 * x" in bare


def test_show_renders_markdown_with_module_path():
    md = show(_example)
    assert md.data.startswith("`test_plots_listing._example`") and "```python" in md.data


def test_band_draws_mean_and_std():
    plots.use_style()
    fig, ax = plt.subplots()
    runs = [[0.0, 1.0, 2.0], [2.0, 3.0, 4.0]]
    plots.band(ax, [0, 1, 2], runs, label="a")
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), [1.0, 2.0, 3.0])
    poly = ax.collections[0].get_paths()[0].vertices
    assert poly[:, 1].max() == np.float64(3.0 + np.std([2.0, 4.0], ddof=1))
    plt.close(fig)


def test_bar_with_seeds_one_bar_per_label():
    fig, ax = plt.subplots()
    plots.bar_with_seeds(ax, ["a", "b"], [[1, 2, 3], [2, 3, 4]], ylabel="acc")
    assert len(ax.patches) == 2 and [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    plt.close(fig)
