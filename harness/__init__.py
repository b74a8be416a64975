"""diffeval: explain why a fine-tuned model scores differently from its base."""

__version__ = "0.1.0"
