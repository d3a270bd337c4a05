"""Locking: resolving each app against the shared Ray lock, and reading the CUDA its wheels need."""
