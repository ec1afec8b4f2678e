"""Granularity of adaptivity, the methods (notebook 08): weight quantisation and per-segment
precision switching / progressive refinement (fine), BranchyNet early exit (medium), model
selection from a pool of variants (coarse). Their comparison harness is `anee.evaluation.granularity`."""
