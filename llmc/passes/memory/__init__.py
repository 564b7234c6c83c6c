"""Memory planning: liveness, arena offsets, memory-aware order (see :mod:`.planner`)."""
