"""Model-based rewards: verifiers that read a trajectory and judge its answer."""
