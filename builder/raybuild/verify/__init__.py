"""Verifying images: the KubeRay smoke test, GPU checks, sizes, cold starts, results and the gate."""
