"""Procedural worlds with known ground truth: training data for the built-in model and a ruler for metrics."""
