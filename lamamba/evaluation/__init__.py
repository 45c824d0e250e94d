"""Sampling for evaluation and the ADM-definition evaluator (docs/protocols.md,
*Sample sets* and *Metrics*).

- ``inception``: the TF-FID Inception-v3 (pt_inception-2015-12-05 layout);
- ``features``: the pluggable feature-extractor interface (Inception by default);
- ``statistics``: mergeable float64 feature statistics;
- ``metrics``: Frechet distance (FID/sFID), IS, precision/recall;
- ``reference``: ADM reference batches, and building one from real images;
- ``shards``: the sample-set layout (fixed index shards with done-markers);
- ``sampler``: the 50K sample job; ``evaluator``: the evaluate job.
"""
