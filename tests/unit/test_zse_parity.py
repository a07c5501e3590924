"""Parity of the `official` preset with the released ZSE-SBIR code, on fixed random weights.

The reference below is written from the release's formulas (docs/zse_sbir.md#architecture-and-names and
#presets), in plain tensor operations over a state dict with the release's names, not with the project's
modules: patch embedding averaged with the conv tokenizer, pre-LN ViT blocks with a fused QKV, the final
LayerNorm, the release's cross-attention wiring (Q own, K other, V own; post-LN with an unbiased-std
LayerNorm on the value input), the reshape of B x N x D to B x D x g x g without a transpose before the
2x2 conv, the conv output read as B x n x R, the row-major cosine matrix and the MLP head.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sbir.config import ZSEConfig
from sbir.models.zse import ZSESBIR

# The official layout at a size the test can afford: 64 px images, 16 px patches (4 x 4 tokens), 2 relation
# tokens per side after the 2 x 2 conv (n = 4, MLP head 16 -> 8 -> 4 -> 1).
SMALL_OFFICIAL = {
    "preset": "official",
    "size": "custom",
    "image_size": 64,
    "patch_size": 16,
    "depth": 2,
    "width": 48,
    "heads": 4,
    "mlp_ratio": 2.0,
    "tokenizer_channels": [8, 16, 24],
    "ca_layers": 1,
    "ca_heads": 4,
    "ca_d_ff": 40,
    "relation_dim": 20,
}


def _layer_norm(x, w, b, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def _release_ln(x, a, b, eps=1e-6):
    """The release's LayerNorm: a * (x - mean) / (unbiased std + eps) + b."""
    return a * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True, unbiased=True) + eps) + b


def _vit(sd, images, cfg):
    p = "sa.model."
    patches = F.conv2d(images, sd[p + "embedding.weight"], sd[p + "embedding.bias"], stride=cfg.patch_size)
    conv = images
    for i, key in enumerate(("scale.seq.0", "scale.seq.2", "scale.seq.4", "scale.seq.6")):
        conv = F.conv2d(conv, sd[p + key + ".weight"], stride=2, padding=3 if i == 0 else 1)
        if i < 3:
            conv = F.relu(conv)
    x = ((patches + conv) / 2).flatten(2).transpose(1, 2)  # tokenizer on both modalities (official)
    x = torch.cat([sd[p + "cls"].expand(x.shape[0], -1, -1), x], 1) + sd[p + "pos_embedding"]
    h, d = cfg.heads, cfg.width // cfg.heads
    for i in range(cfg.depth):
        blk = f"{p}transformer.layers.{i}.0."
        y = _layer_norm(x, sd[blk + "layer_norm_input.weight"], sd[blk + "layer_norm_input.bias"])
        q, k, v = F.linear(y, sd[blk + "attention.to_qkv.weight"], sd[blk + "attention.to_qkv.bias"]).chunk(3, -1)
        q, k, v = (t.reshape(t.shape[0], t.shape[1], h, d).transpose(1, 2) for t in (q, k, v))
        att = ((q @ k.transpose(-1, -2)) * d**-0.5).softmax(-1)
        out = (att @ v).transpose(1, 2).reshape(x.shape)
        x = x + F.linear(out, sd[blk + "attention.to_out.0.weight"], sd[blk + "attention.to_out.0.bias"])
        y = _layer_norm(x, sd[blk + "layer_norm_out.weight"], sd[blk + "layer_norm_out.bias"])
        y = F.linear(
            F.gelu(F.linear(y, sd[blk + "mlp.net.0.weight"], sd[blk + "mlp.net.0.bias"])),
            sd[blk + "mlp.net.3.weight"],
            sd[blk + "mlp.net.3.bias"],
        )
        x = x + y
    return _layer_norm(x, sd[p + "transformer.encoder_norm.weight"], sd[p + "transformer.encoder_norm.bias"])


def _cross_attention(sd, layer, query, key, value, cfg):
    """One release CA layer: Y = LN(V + MHA(Q, K, V)), Z = LN(Y + FFN(Y))."""
    p = f"ca.encoder.{layer}.0."
    h = cfg.ca_heads
    d = cfg.width // h

    def proj(x, i):
        y = F.linear(x, sd[f"{p}self_attn.linears.{i}.weight"], sd[f"{p}self_attn.linears.{i}.bias"])
        return y.reshape(y.shape[0], y.shape[1], h, d).transpose(1, 2)

    att = ((proj(query, 0) @ proj(key, 1).transpose(-1, -2)) / d**0.5).softmax(-1)
    mixed = (att @ proj(value, 2)).transpose(1, 2).reshape(value.shape)
    mixed = F.linear(mixed, sd[p + "self_attn.linears.3.weight"], sd[p + "self_attn.linears.3.bias"])
    y = _release_ln(value + mixed, sd[p + "sublayer.0.norm.a"], sd[p + "sublayer.0.norm.b"])
    ff = F.linear(
        F.relu(F.linear(y, sd[p + "feed_forward.w_1.weight"], sd[p + "feed_forward.w_1.bias"])),
        sd[p + "feed_forward.w_2.weight"],
        sd[p + "feed_forward.w_2.bias"],
    )
    return _release_ln(y + ff, sd[p + "sublayer.1.norm.a"], sd[p + "sublayer.1.norm.b"])


def _downsample(sd, tokens, cfg):
    b, _, d = tokens.shape
    grid = tokens.reshape(b, d, cfg.grid, cfg.grid)  # the release's view, without a transpose
    out = F.conv2d(grid, sd["conv2d.weight"], sd["conv2d.bias"], stride=2)
    return out.reshape(b, out.shape[1], -1).transpose(1, 2)  # B x R x n read as B x n x R


def _relation(sd, sketch_tokens, photo_tokens, cfg):
    s = _cross_attention(sd, "layer1", sketch_tokens, photo_tokens, sketch_tokens, cfg)  # Q own, K other, V own
    p = _cross_attention(sd, "layer2", photo_tokens, sketch_tokens, photo_tokens, cfg)
    s_rel = F.normalize(_downsample(sd, s[:, 1:], cfg), dim=-1)
    p_rel = F.normalize(_downsample(sd, p[:, 1:], cfg), dim=-1)
    kernel = torch.nan_to_num(s_rel @ p_rel.transpose(1, 2)).flatten(1)  # row-major: 49 * i + j
    x = F.relu(F.linear(kernel, sd["rn.rn.0.weight"], sd["rn.rn.0.bias"]))
    x = F.relu(F.linear(x, sd["rn.rn.3.weight"], sd["rn.rn.3.bias"]))
    return torch.sigmoid(F.linear(x, sd["rn.rn.6.weight"], sd["rn.rn.6.bias"])).squeeze(-1), s[:, 0], p[:, 0]


@pytest.fixture(scope="module")
def official():
    cfg = ZSEConfig(**SMALL_OFFICIAL)
    torch.manual_seed(0)
    model = ZSESBIR(cfg).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # fixed random weights of a realistic scale everywhere, LayerNorms included
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model


def test_the_official_forward_matches_the_release_formulas(official):
    cfg = official.cfg
    sd = {k: v.detach() for k, v in official.state_dict().items()}
    generator = torch.Generator().manual_seed(2)
    sketches = torch.randn(3, 3, 64, 64, generator=generator)
    photos = torch.randn(3, 3, 64, 64, generator=generator)
    with torch.no_grad():
        ref_sketch, ref_photo = _vit(sd, sketches, cfg), _vit(sd, photos, cfg)
        ref_score, ref_s_ret, ref_p_ret = _relation(sd, ref_sketch, ref_photo, cfg)
        enc_s, enc_p = official.encode(sketches, "sketch"), official.encode(photos, "photo")
        out = official.relate(enc_s, enc_p)
    assert torch.allclose(enc_s.tokens, ref_sketch, atol=1e-5) and torch.allclose(enc_p.tokens, ref_photo, atol=1e-5)
    assert torch.allclose(enc_s.ret, ref_sketch[:, 0], atol=1e-5)  # `ret` retrieves with the pre-CA [Ret] token
    assert torch.allclose(out.sketch_ret, ref_s_ret, atol=1e-5) and torch.allclose(out.photo_ret, ref_p_ret, atol=1e-5)
    assert torch.allclose(out.score, ref_score, atol=1e-6)
    assert ref_score.std() > 1e-3, "the fixture's scores differ, so the comparison is not trivially at a constant"


def test_the_reference_tells_the_wirings_and_downsamplings_apart(official):
    """The check is sharp: the paper's wiring or a transposed downsampling give other scores."""
    sd = {k: v.detach() for k, v in official.state_dict().items()}
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    paper = ZSESBIR(ZSEConfig(**(SMALL_OFFICIAL | {"ca_wiring": "q_other_kv_own", "downsample": "spatial_2x2"}))).eval()
    paper.load_state_dict(sd)
    with torch.no_grad():
        ref, _, _ = _relation(sd, _vit(sd, images, official.cfg), _vit(sd, images.flip(0), official.cfg), official.cfg)
        other = paper(images, images.flip(0)).score
    assert not torch.allclose(other, ref, atol=1e-4)
