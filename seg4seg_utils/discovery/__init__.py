"""Layer 3, discovery: finding slices without the failure label, and judging them with it.

Image embeddings and their cache (:mod:`.embed`), the performance-weighted slicer and its baselines
(:mod:`.slicer`), the paper's evaluation protocol (:mod:`.protocol`), patch-level slices (:mod:`.patches`)
and slice explanations (:mod:`.explain`). Imports the layers below (foundation, data, model), nothing above.
"""
