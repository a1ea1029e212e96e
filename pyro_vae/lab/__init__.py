"""Studies of inference itself: the gradient-variance lab and the amortization-gap report."""
