"""fednode proto."""
