"""The shared core every line of work builds on: actions, per-family adapters, the one layer step
and the one check of a pass resumed part-way, the K/V cache, exact cost counting, typed outputs, model
loading and the integrity of its weight cache, data, checkpoints, real-scalar arguments, divergences,
freezing a base for training and timers. Nothing here imports from the rest of the package."""
