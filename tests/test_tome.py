"""Token merging (deit_demo.variants.tome_merge): exact at r = 0, protected class and distillation tokens, sizes
conserved, every catalog DeiT."""

import pytest
import torch

from deit_demo.core.models import MODELS, create_model
from deit_demo.variants.tome_merge import ToMe, bipartite_soft_matching, merge


@pytest.mark.parametrize("key", ["deit_tiny", "deit_tiny_distilled", "deit3_small", "deit_synth"])
def test_r0_is_exactly_the_unmerged_model(key):
    model = create_model(MODELS[key]).eval()
    x = torch.randn(2, 3, MODELS[key].input_size, MODELS[key].input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(ToMe(model, 0)(x), model(x))


@pytest.mark.parametrize("key", list(MODELS))
def test_every_catalog_deit_merges_with_its_default_r(key):
    spec = MODELS[key]
    model = create_model(spec).eval()
    tome = ToMe(model, spec.tome_r)
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    counts = tome.tokens_per_block(tokens)
    assert counts[-1] < tokens and counts == sorted(counts, reverse=True) and counts[-1] >= tome.protected
    seen = []
    hooks = [block.mlp.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1])) for block in model.blocks]
    with torch.inference_mode():
        out = tome(torch.randn(1, 3, spec.input_size, spec.input_size))
    for hook in hooks:
        hook.remove()
    assert out.shape == (1, spec.num_classes) and torch.isfinite(out).all()
    assert seen == counts  # each block's MLP really sees the merged token count


@pytest.mark.parametrize("protected", [1, 2])
def test_protected_tokens_are_never_merged(protected):
    # every token identical: all pairs are equally similar, so only the protection keeps tokens 0 and 1 apart
    metric = torch.ones(1, 10, 4)
    unmerged, merged, destination = bipartite_soft_matching(metric, 4, protected)
    assert 0 not in merged.flatten().tolist()  # A's first token (the class token) is never a source
    if protected == 2:
        assert 0 not in destination.flatten().tolist()  # B's first token (the distillation token) is never a target
    x = torch.arange(10.0).reshape(1, 10, 1)
    out = merge(x, unmerged, merged, destination, protected)
    assert out.shape == (1, 6, 1) and out[0, 0, 0] == 0 and (protected == 1 or out[0, 1, 0] == 1)


def test_sizes_are_conserved_and_averages_weighted():
    metric = torch.randn(2, 11, 8, generator=torch.Generator().manual_seed(1))
    indices = bipartite_soft_matching(metric, 3, 2)
    size = merge(torch.ones(2, 11, 1), *indices, 2)
    assert size.shape == (2, 8, 1) and torch.equal(size.sum(dim=1), torch.full((2, 1), 11.0))
    x = torch.randn(2, 11, 5)
    merged = merge(x, *indices, 2) / size  # the size-weighted mean of each group
    assert torch.allclose((merged * size).sum(dim=1), x.sum(dim=1), atol=1e-5)  # nothing lost, nothing added


def test_negative_r_is_refused():
    with pytest.raises(ValueError):
        ToMe(create_model(MODELS["deit_tiny"]), -1)
