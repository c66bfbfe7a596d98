"""The model wing: encoders (torch and ONNX Runtime), the ONNX export, random-weight stand-ins."""

from clipsearch.models.torch_encoder import (MAX_TEXT_TOKENS, Encoder, TorchClipEncoder, _quiet_transformers,
                                             has_random_weights, l2_normalize, load_encoder, resolve_model_id)

__all__ = ["MAX_TEXT_TOKENS", "Encoder", "TorchClipEncoder", "has_random_weights", "l2_normalize", "load_encoder",
           "resolve_model_id", "_quiet_transformers"]
