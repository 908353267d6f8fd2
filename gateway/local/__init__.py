"""Running the parts on this machine: tritonserver and redis-server processes, the filled model
repository, and where generated artefacts live."""
