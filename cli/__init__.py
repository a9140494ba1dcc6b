"""fednode cli."""
