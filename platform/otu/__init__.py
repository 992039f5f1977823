"""otu — optimal-transport machine unlearning at scale."""

__version__ = "0.1.0"
