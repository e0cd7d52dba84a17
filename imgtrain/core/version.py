"""The package version: one place, read by pyproject.toml (setuptools dynamic), run.json and the /v2 server metadata."""

__version__ = "0.1.0"
