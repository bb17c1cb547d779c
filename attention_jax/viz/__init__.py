"""Plots of attention and results: NumPy in, PNG files out (matplotlib Agg, no display)."""
from attention_jax.viz.heatmaps import (collect_attention, example_figures, figure_to_png_bytes,
                                        figure_to_rgba, make_alignment_figure, make_heads_figure,
                                        plot_alignment, plot_heads, save_example_heatmaps,
                                        save_figure, save_png)
