"""icpo-eval: measure and fix how language models behave in multi-turn conversations."""

__version__ = "0.1.0"
