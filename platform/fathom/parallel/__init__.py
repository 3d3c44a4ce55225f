"""fathom.parallel: `ParallelContext` (ranks, sizes, process groups) and the collectives the
model calls; below the model, no Ray."""
