"""Task heads: from model outputs to classes, probabilities and metrics (NumPy only)."""
