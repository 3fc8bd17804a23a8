"""The guided sampler: one loop, guidance pieces, SMC, rejection, the automatic strength."""
