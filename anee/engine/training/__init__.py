"""Training the learned controller: traces and hindsight labels (traces), the supervised warm-start
(warmstart), REINFORCE (rl), SKIP-threshold calibration (skip_calibration), and the hindsight
per-token allocation that bounds what any controller could gain (oracle)."""
