"""Bundled scenarios (*.toml), runnable by name: `privlab run NAME`."""
