"""Weights across formats: diffusers DiT folders (``diffusers_dit``) and ``ditlab convert`` (``convert``)."""
