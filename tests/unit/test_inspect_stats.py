"""Brain-scan statistics on matrices whose answers are known by hand."""

from __future__ import annotations

import math

import pytest
import torch

from runners.inspect import scan_digest, stats
from runners.inspect.alarms import concentration_alarms, norm_alarms
from runners.inspect.weights import parse_name


def test_diagonal_matrix_norms_and_stable_rank() -> None:
    w = torch.diag(torch.tensor([3.0, 4.0, 0.0]))
    row = stats.tensor_stats(w, bins=10)
    assert row["frobenius"] == pytest.approx(5.0)
    assert row["spectral_norm"] == pytest.approx(4.0)
    assert row["stable_rank"] == pytest.approx(25.0 / 16.0)
    assert row["max_abs"] == pytest.approx(4.0)
    assert row["mean"] == pytest.approx(7.0 / 9.0)
    assert row["nonfinite"] == 0


def test_rank_one_outer_product() -> None:
    u = torch.tensor([1.0, 2.0, 2.0])  # |u| = 3
    v = torch.tensor([3.0, 0.0, 4.0, 0.0])  # |v| = 5
    w = torch.outer(u, v)
    spectral, _ = stats.spectral_norm(w)
    assert spectral == pytest.approx(15.0)
    assert stats.stable_rank(15.0, spectral) == pytest.approx(1.0)
    s, _ = stats.singular_values(w)
    assert stats.effective_rank(s) == pytest.approx(1.0, abs=1e-6)
    assert stats.numerical_rank(s, tuple(w.shape)) == 1


def test_effective_rank_by_hand() -> None:
    assert stats.effective_rank(torch.ones(7)) == pytest.approx(7.0)
    # p = (1/4, 1/4, 1/2): H = 1.5 ln 2, exp(H) = 2 ** 1.5
    assert stats.effective_rank(torch.tensor([1.0, 1.0, 2.0])) == pytest.approx(2**1.5)
    assert stats.effective_rank(torch.zeros(3)) == 0.0


def test_excess_kurtosis_by_hand() -> None:
    # mean 0, m2 = 8/8 = 1, m4 = 32/8 = 4: excess kurtosis 4/1 - 3 = 1
    x = torch.tensor([-2.0, 0, 0, 0, 0, 0, 0, 2.0])
    assert stats.moments(x)["kurtosis"] == pytest.approx(1.0)
    # two-point +-1: m4 / m2^2 = 1, excess -2
    assert stats.moments(torch.tensor([-1.0, 1.0] * 50))["kurtosis"] == pytest.approx(-2.0)
    assert stats.moments(torch.ones(5))["kurtosis"] is None


def test_moments_chunked_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3 + 1
    whole = stats.moments(x)
    monkeypatch.setattr(stats, "CHUNK", 7)
    chunked = stats.moments(x)
    for key in ("mean", "std", "kurtosis", "frobenius", "max_abs"):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-9)
    assert whole["std"] == pytest.approx(float(x.double().std(unbiased=False)), rel=1e-9)


def test_nonfinite_counted_and_stats_over_finite_values() -> None:
    w = torch.tensor([[1.0, float("nan")], [float("inf"), -3.0]])
    row = stats.tensor_stats(w, bins=4)
    assert row["nonfinite"] == 2
    assert row["max_abs"] == pytest.approx(3.0)
    assert row["spectral_norm"] is None
    assert sum(row["histogram"]["counts"]) == 2


def test_histogram_counts_every_value() -> None:
    x = torch.arange(100, dtype=torch.float32)
    hist = stats.histogram(x, bins=10)
    assert hist["counts"] == [10] * 10
    assert hist["edges"][0] == 0.0 and hist["edges"][-1] == 99.0


def test_gram_and_subspace_paths_match_svdvals(monkeypatch: pytest.MonkeyPatch) -> None:
    w = torch.randn(300, 120, generator=torch.Generator().manual_seed(1))
    w[:, 0] *= 5  # a clear top singular value
    exact = torch.linalg.svdvals(w.double())
    monkeypatch.setattr(stats, "SMALL_SIDE", 8)
    spectral, method = stats.spectral_norm(w)
    assert method == "gram" and spectral == pytest.approx(float(exact[0]), rel=1e-5)
    s, method = stats.singular_values(w)
    assert method == "gram"
    torch.testing.assert_close(s, exact, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(stats, "GRAM_MAX_SIDE", 16)
    spectral, method = stats.spectral_norm(w)
    assert method == "subspace" and spectral == pytest.approx(float(exact[0]), rel=1e-4)


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_low_rank_path_equals_dense(rslora: bool) -> None:
    gen = torch.Generator().manual_seed(2)
    r, out_dim, in_dim, alpha = 4, 96, 80, 16.0
    a = torch.randn(r, in_dim, generator=gen)
    b = torch.randn(out_dim, r, generator=gen) * 0.1
    scaling = alpha / (math.sqrt(r) if rslora else r)
    dense = scaling * (b.double() @ a.double())
    low = stats.lora_delta_stats(a, b, scaling, base_fro=10.0)
    ref = stats.dense_delta_stats(dense, 10.0, (out_dim, in_dim))
    assert low["delta_frobenius"] == pytest.approx(float(dense.norm()), rel=1e-10)
    for key in ("delta_frobenius", "relative_change", "delta_spectral_norm", "effective_rank"):
        assert low[key] == pytest.approx(ref[key], rel=1e-5), key
    assert low["numerical_rank"] == ref["numerical_rank"] == r
    torch.testing.assert_close(
        stats.lora_singular_values(a, b, scaling),
        torch.linalg.svdvals(dense)[:r],
        rtol=1e-6,
        atol=1e-9,
    )


def test_parse_name() -> None:
    assert parse_name("model.layers.3.self_attn.q_proj.weight") == (3, "q_proj")
    assert parse_name("model.layers.12.mlp.gate_proj.weight") == (12, "gate_proj")
    assert parse_name("model.layers.0.input_layernorm.weight") == (0, "input_layernorm")
    assert parse_name("model.embed_tokens.weight") == (None, "embed_tokens")
    assert parse_name("lm_head.weight") == (None, "lm_head")
    assert parse_name("transformer.h.5.attn.c_attn.bias") == (5, "c_attn")


def test_scan_digest_is_canonical_and_sensitive() -> None:
    one = scan_digest("sha256:aa", None, ["hi"], {"top_k": 5, "bins": 50})
    assert one == scan_digest("sha256:aa", None, ["hi"], {"bins": 50, "top_k": 5})
    assert one.startswith("sha256:") and len(one) == 7 + 64
    assert one != scan_digest("sha256:aa", None, ["hi"], {"top_k": 6, "bins": 50})
    assert one != scan_digest("sha256:aa", "sha256:bb", ["hi"], {"top_k": 5, "bins": 50})
    assert one != scan_digest("sha256:aa", None, None, {"top_k": 5, "bins": 50})


def _row(layer: int, module: str, fro: float) -> dict:
    name = f"model.layers.{layer}.mlp.{module}.weight"
    return {"tensor": name, "layer": layer, "module": module, "frobenius": fro}


def test_norm_outlier_rule_names_the_layer() -> None:
    rows = [_row(i, "up_proj", 1.0 + 0.01 * i) for i in range(8)]
    assert norm_alarms(rows, None, 6.0) == []
    rows[5]["frobenius"] *= 50
    found = norm_alarms(rows, None, 6.0)
    assert [(a["severity"], a["layer"], a["module"]) for a in found] == [("error", 5, "up_proj")]
    rows[2]["frobenius"] /= 50  # smaller than the rest: pretrained models have such layers
    found = norm_alarms(rows, None, 6.0)
    assert [(a["severity"], a["layer"]) for a in found] == [("warning", 2), ("error", 5)]
    rows[2]["frobenius"] *= 50
    base = {r["tensor"]: r["frobenius"] for r in rows}
    base[rows[5]["tensor"]] /= 50
    found = norm_alarms(rows, base, 6.0)
    assert [(a["layer"], a["module"]) for a in found] == [(5, "up_proj")]


def test_concentration_rule() -> None:
    spread = [{"layer": i, "module": "q_proj", "delta_frobenius": 1.0} for i in range(6)]
    assert concentration_alarms(spread) == []
    spread[2]["delta_frobenius"] = 10.0  # 100 / 105 of the energy
    (found,) = concentration_alarms(spread)
    assert found["layer"] == 2 and found["severity"] == "warning"
    assert concentration_alarms(spread[:3]) == []  # only 3 layers changed: no rule
