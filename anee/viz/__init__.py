"""Every figure the notebooks draw: each function returns a matplotlib Figure (or draws on an Axes)
for `anee.evaluation.results.save_figure`."""
