"""labeler: distributed auto-labeling on Ray."""

__version__ = "0.1.0"
