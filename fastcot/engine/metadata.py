"""Re-export: `AttentionMetadata` belongs to the layers that read it (`fastcot.layers.attention`)."""

from fastcot.layers.attention import AttentionMetadata

__all__ = ["AttentionMetadata"]
