"""cdp: a Customer Data Platform that runs as a command-line toolkit over local files."""

__version__ = "0.1.0"
