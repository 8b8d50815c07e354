"""Video monitoring-center hub."""

__version__ = "0.1.0"
