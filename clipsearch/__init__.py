"""clipsearch: CLIP image search core (encoder, safe image decoding, k-NN backends)."""
