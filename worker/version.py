"""The release, in one place: the package metadata (pyproject.toml) and the User-Agent sent to ACS read it."""

__version__ = "0.1.0"
