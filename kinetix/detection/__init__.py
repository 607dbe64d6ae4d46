"""Spatio-temporal action detection (EVAD) in pure PyTorch: box ops, RoIAlign, matcher, AVA eval."""
