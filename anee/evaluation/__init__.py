"""Evaluation on top of the three lines of work: sliding-window perplexity (perplexity), the methods
registry and frontier (methods/, frontier), budget adherence (budget), depth usage (depth), the
hierarchical and granularity harnesses, the decode benchmark (bench), result files (results) and the
notebooks' set-up (notebook)."""
