"""Lazy readers and atomic writers, one module per file format."""
