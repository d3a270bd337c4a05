"""Running the RayService topology locally in Docker, and the fault drills against it."""
