"""fednode proto/v1."""
