"""vitscope: how Vision Transformers use attention — head importance, attention strength, patterns."""

__version__ = "0.1.0"
