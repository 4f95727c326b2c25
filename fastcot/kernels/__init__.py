"""Kernel implementations: `triton/` (Triton), `cuda` (the compiled extension), `reference` (pure torch)."""
