"""The generation engine: metadata, sampling, block management, scheduling, model running."""
