"""ZSE-SBIR: ViT with a learnable tokenizer, cross-attention and a relation network."""

from sbir.models.zse.model import ZSESBIR, RelationOutput, ZSEEncoding
from sbir.models.zse.official import load_official_checkpoint, official_state_dict_spec

__all__ = ["ZSESBIR", "RelationOutput", "ZSEEncoding", "load_official_checkpoint", "official_state_dict_spec"]
