"""Near-duplicate detection shared by stages and tools: the MinHash engine
(:mod:`pipeline.dedup.minhash`), its compiled loops (:mod:`pipeline.dedup.kernels`),
and the layout of shingles and signatures in a stage's summary table
(:mod:`pipeline.dedup.signatures`). ``near_dedup`` removes near copies with it,
``split`` keeps near copies in one split with it, and ``dedup-calibrate`` measures
banding with it; none of them imports another to get there."""
