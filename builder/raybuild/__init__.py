"""raybuild: slim, fast-starting Ray Serve images and the KubeRay RayService that runs them."""

__version__ = "0.1.0"
