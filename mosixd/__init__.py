"""mosixd: the mosix node daemon."""

__version__ = "0.1.0"
