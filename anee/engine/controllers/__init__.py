"""ANEE controllers: what a token does at each layer. One module per concept, imported explicitly
(the executor depends on `base` only; the profiler-based controllers depend on the executor):

    base          the protocol, `LayerView`, `FullController`, `FixedController`, `skip_pattern`
    budget        the seed's simple budget policy
    plan          layer plans: static DROP plus the marginal layers ASKed per token
    pacing        the per-token band around the budget, `PacedController`
    heuristic     thresholds on the profiler state
    policy        the MLP policy and its checkpoints
    learned       the MLP as a controller, `load_controller`
    entropy_exit  BranchyNet's confidence rule on the LM
    kl_profile    a token's whole depth from a ridge prediction of its KL profile (closed form)
"""
