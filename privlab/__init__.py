"""privlab: privacy attack-and-defense evaluation for distributed machine learning.

Heavy libraries (torch, opacus, tenseal) are imported where they are used so that the CLI's
`--help` and `list` stay fast.
"""

__version__ = "0.1.0"
