"""The model wing: families, encoders (torch and ONNX Runtime), the ONNX export, stand-ins.

    from clipsearch.models import load_encoder
    encoder = load_encoder(ModelSettings.from_env())   # the family comes from the checkpoint's config

Nothing here imports torch at import time: the ONNX query path stays torch-free.
"""

from clipsearch.models.card import CARD_FILE, ModelCard, has_random_weights, read_card, resolve_model_id
from clipsearch.models.encoder import Encoder, l2_normalize, load_encoder
from clipsearch.models.families import FAMILIES, Family, UnsupportedModel, family_of

__all__ = ["CARD_FILE", "Encoder", "FAMILIES", "Family", "ModelCard", "UnsupportedModel", "family_of",
           "has_random_weights", "l2_normalize", "load_encoder", "read_card", "resolve_model_id"]
