"""Retrieval-quality evaluation: Recall@K and zero-shot top-K through the production path."""
