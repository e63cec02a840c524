"""Image data: dataset layouts, decoding and synthetic C-NMC-like data."""
