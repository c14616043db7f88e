"""The task mix: which dataset each sample comes from, from the recipe to the trainer's logs.

Followed through a run, one module per idea:

    config.SamplingConfig  the recipe's section: strategy, loss-aware bounds, and its schedule and ramps
                           (`factors`, `breakpoints`: pure functions of its fields, kept there because the
                           schema's validators check them and the schema sits below every other layer)
    policies.py            the target mix at each step: weights or sizes at a temperature, the loss-aware
                           update, times the schedule's factors (`MixPolicy`)
    board.py               loss-aware mixes passed from the trainer to its loader workers (`MixBoard`)
    sampler.py             the golden-ratio sampler, keyed by the run's global micro-batch, that loader
                           workers draw tasks with
    balancer.py            the trainer's side: cross-rank loss sums, mix updates, the mix in the logs

The loader (unimodal/data/loader.py) draws with `sampler` from `policies`' target, read through the
`board`; the trainer (unimodal/train/loop.py) drives the `Balancer`, handing it the loader's board and
its all-reduce, and checkpoints its state.
"""
