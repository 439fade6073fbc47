"""Retraining from operator reviews: candidate models, shadow evaluation and promotion."""
