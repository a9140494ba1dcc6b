"""fednode node."""
