"""Curation pipeline for fine-tuning data: raw rows in, a clean, versioned Parquet dataset out."""

__version__ = "0.2.0"
