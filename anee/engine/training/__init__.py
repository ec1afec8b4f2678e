"""Training the learned controller: traces and hindsight labels (traces), the supervised warm-start
(warmstart), REINFORCE (rl), SKIP-threshold calibration (skip_calibration), the layer bypass's closed form and
end-to-end tuning (bypass), the closed-form KL-profile controller (kl_profile), and the hindsight
per-token allocation that bounds what any controller could gain (oracle)."""
