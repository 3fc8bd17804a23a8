"""Labels: the pool, label sessions, the simulated labeller, active ranking."""
