"""Diagnostics: gradient flow through time, and what gradients do over training."""
