"""likely: CTR ranking for "you may like" feeds."""

__version__ = "0.1.0"
