

def test_the_latency_plot_draws_every_execution_mode():
    """A mode without a colour would silently be left out of the plot (the re-anchored modes once were)."""
    from evaluation.latency_loop import MODES
    from evaluation.latency_plot import _COLORS

    assert set(MODES) <= set(_COLORS)
