"""The shared core every line of work builds on: actions, per-family adapters, the one layer step,
the K/V cache, exact cost counting, typed outputs, model loading, data, checkpoints, divergences
and timers. Nothing here imports from the rest of the package."""
