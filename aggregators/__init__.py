"""fednode aggregators."""
