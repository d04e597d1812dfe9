"""Offline training and evaluation tools: corpus readers, evaluation measures, plots."""
