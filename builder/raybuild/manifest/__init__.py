"""The KubeRay manifest: rendering the RayService or RayCluster, and validating it against the CRD."""
