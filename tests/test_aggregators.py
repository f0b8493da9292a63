"""Aggregators against hand computations written as plain loops."""
import pytest
import torch

from actiongpt_plugin import hookimpl
from actiongpt_plugin.errors import ActionGPTError
from actiongpt_plugin.plugins import get_plugin_manager, get_registry, register_plugin, unregister_plugin

N, K, T, H = 3, 4, 7, 5


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(N * K, T, H, generator=g)
    lengths = torch.randint(2, T + 1, (N * K,), generator=g)
    lengths[0] = T  # phrase 0 reaches the full width; others may not
    mask = torch.arange(T)[None] < lengths[:, None]
    return features, mask


def agg(name):
    return get_registry().aggregator(name)


def test_builtin_names_registered():
    assert {"paper", "masked-mean", "pooled-mean", "norm-mean", "concat"} <= set(get_registry().aggregators)


def test_paper_tokens_is_positionwise_mean_with_pads_and_bool_union_mask(tokens):
    features, mask = tokens
    out, out_mask = agg("paper")(features, mask, K)
    assert out.shape == (N, T, H) and out_mask.dtype == torch.bool and out_mask.shape == (N, T)
    for i in range(N):
        for t in range(T):
            rows = [features[i * K + j, t] for j in range(K)]  # pad states included
            assert torch.allclose(out[i, t], sum(rows) / K, atol=1e-6)
            assert bool(out_mask[i, t]) == any(bool(mask[i * K + j, t]) for j in range(K))


def test_paper_pooled_is_plain_mean():
    x = torch.randn(N * K, 8)
    out, m = agg("paper")(x, None, K)
    assert m is None and out.shape == (N, 8)
    for i in range(N):
        assert torch.allclose(out[i], sum(x[i * K + j] for j in range(K)) / K, atol=1e-6)


def test_masked_mean_uses_real_tokens_only(tokens):
    features, mask = tokens
    out, out_mask = agg("masked-mean")(features, mask, K)
    for i in range(N):
        for t in range(T):
            real = [features[i * K + j, t] for j in range(K) if mask[i * K + j, t]]
            if real:
                assert torch.allclose(out[i, t], sum(real) / len(real), atol=1e-6)
                assert out_mask[i, t]
            else:
                assert not out_mask[i, t]


def test_pooled_mean_tokens_gives_one_token(tokens):
    features, mask = tokens
    out, out_mask = agg("pooled-mean")(features, mask, K)
    assert out.shape == (N, 1, H) and out_mask.shape == (N, 1) and out_mask.all()
    for i in range(N):
        per_description = []
        for j in range(K):
            r = i * K + j
            real = [features[r, t] for t in range(T) if mask[r, t]]
            per_description.append(sum(real) / len(real))
        assert torch.allclose(out[i, 0], sum(per_description) / K, atol=1e-6)


def test_norm_mean_pooled_keeps_mean_norm_and_direction():
    x = torch.randn(N * K, 16) * torch.arange(1, N * K + 1)[:, None]
    out, _ = agg("norm-mean")(x, None, K)
    for i in range(N):
        parts = x[i * K : (i + 1) * K]
        mean = parts.mean(0)
        assert torch.allclose(out[i].norm(), parts.norm(dim=1).mean(), rtol=1e-5)
        assert torch.allclose(out[i] / out[i].norm(), mean / mean.norm(), atol=1e-6)
        assert out[i].norm() > mean.norm()  # a plain mean of spread vectors shrinks


def test_norm_mean_tokens_per_position(tokens):
    features, mask = tokens
    out, out_mask = agg("norm-mean")(features, mask, K)
    for i in range(N):
        for t in range(T):
            real = [features[i * K + j, t] for j in range(K) if mask[i * K + j, t]]
            if not real:
                continue
            mean = sum(real) / len(real)
            target = sum(r.norm() for r in real) / len(real)
            assert torch.allclose(out[i, t], mean * target / mean.norm(), atol=1e-5)


def test_concat_packs_real_tokens(tokens):
    features, mask = tokens
    out, out_mask = agg("concat")(features, mask, K)
    lengths = [int(mask[i * K : (i + 1) * K].sum()) for i in range(N)]
    assert out.shape == (N, max(lengths), H)
    for i in range(N):
        expected = [features[i * K + j, t] for j in range(K) for t in range(T) if mask[i * K + j, t]]
        assert torch.equal(out[i, : lengths[i]], torch.stack(expected))
        assert out_mask[i, : lengths[i]].all() and not out_mask[i, lengths[i] :].any()


def test_concat_refuses_pooled_features():
    with pytest.raises(ActionGPTError, match="token-level"):
        agg("concat")(torch.randn(8, 4), None, 4)


def test_rows_must_be_a_multiple_of_k():
    with pytest.raises(ActionGPTError, match="multiple of k=4"):
        agg("paper")(torch.randn(6, 4), None, 4)


class Overrider:
    """A third-party plugin that replaces how 'paper' is computed (first result wins)."""

    @hookimpl
    def aggregate_embeddings(self, aggregator, features, mask, k):
        if aggregator.name == "paper" and mask is None:
            return features.reshape(-1, k, features.shape[-1])[:, 0], None
        return None


def test_hook_lets_a_plugin_override_and_falls_back_to_builtin():
    x = torch.randn(8, 3)
    hook = get_plugin_manager().hook.aggregate_embeddings
    builtin, _ = hook(aggregator=agg("paper"), features=x, mask=None, k=4)
    register_plugin(Overrider(), name="overrider-test")
    try:
        first, _ = hook(aggregator=agg("paper"), features=x, mask=None, k=4)
        other, _ = hook(aggregator=agg("norm-mean"), features=x, mask=None, k=4)
    finally:
        unregister_plugin("overrider-test")
    assert torch.equal(first, x[[0, 4]])
    assert torch.allclose(builtin, x.reshape(2, 4, 3).mean(1))
    assert torch.allclose(other, agg("norm-mean")(x, None, 4)[0])
