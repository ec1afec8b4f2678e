"""Notebook 08's comparison harness: every strategy scored per window in MACs and weight bytes
(strategies), the coarse pool of variants and its selectors (pool), one table and summary (table)."""
