"""Shipping images: pushing to the registry and recording digests."""
