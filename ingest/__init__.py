"""python -m ingest: Unsplash Lite or a local folder into the k-NN index (see ingest.cli)."""
