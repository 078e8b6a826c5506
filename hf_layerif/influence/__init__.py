"""The per-block influence engine: gradient capture, Gram statistics, estimators, scores."""
