"""stg: find which classification tasks to train together (STG-MTL, TAG, MT2ST)."""

__version__ = "0.1.0"
