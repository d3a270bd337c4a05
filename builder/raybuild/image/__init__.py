"""Images: the spec, Dockerfile rendering, prune rules, bases and the BuildKit build."""
