"""Graph passes, imported as ``snncc.passes`` (never as top-level ``passes``)."""
