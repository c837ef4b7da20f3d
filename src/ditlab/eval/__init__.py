"""Evaluation: sample-quality measures."""
