"""`torch.nn.Module` building blocks that call `fastcot.ops`."""

from fastcot.layers.attention import PagedAttention
from fastcot.layers.int4_linear import Int4Linear

__all__ = ["Int4Linear", "PagedAttention"]
