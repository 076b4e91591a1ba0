"""Active-learning simulation: replay DECOMP and the baselines on a fully labelled dataset.

The ground truth is revealed only inside the regions a strategy selects, so the labelled share of the pool
needed to reach a given score can be measured before any expert time is spent.
"""

# Names only (no imports), so that the command line can offer them without loading numpy or torch.
DECOMP = "decomp"
BASELINES = ("random", "entropy", "entropy-kmeans", "entropy-coreset", "badge")
FULL = "full"  # the reference: every pool pixel labelled
STRATEGIES = (DECOMP, *BASELINES, FULL)
