"""Deep memory on packed variable-length batches equals running each sequence on its own."""
from __future__ import annotations

import pytest
import torch

from mirasdsl.kernels.deep_memory import DeepMemoryConfig, DeepMemoryState, deep_memory


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("backend", ["naive", "chunk"])
@pytest.mark.parametrize("momentum", [False, True])
def test_packed_equals_separate(backend, momentum):
    torch.manual_seed(0)
    H, K, hidden = 2, 6, 10
    cfg = DeepMemoryConfig(depth=2, hidden=hidden, momentum=momentum, chunk_size=4, residual=True)
    lens = [5, 0, 11, 3]
    T = sum(lens)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    q, k, v = (torch.randn(1, T, H, K, dtype=torch.float64) for _ in range(3))
    eta = torch.rand(1, T, H, dtype=torch.float64) * 0.5
    g = -torch.rand(1, T, H, dtype=torch.float64) * 0.1
    mu = torch.rand(1, T, H, dtype=torch.float64) if momentum else None
    init = (torch.randn(H, K, hidden, dtype=torch.float64) * 0.3, torch.randn(H, hidden, K, dtype=torch.float64) * 0.3)
    n = len(lens)
    h0 = DeepMemoryState(tuple(torch.randn(n, *w.shape, dtype=torch.float64) * 0.3 for w in init),
                         tuple(torch.zeros(n, *w.shape, dtype=torch.float64) for w in init) if momentum else None)
    o, final = deep_memory(q, k, v, eta, init, cfg, g=g, mu=mu, initial_state=h0, output_final_state=True,
                           backend=backend, cu_seqlens=cu)
    assert o.shape == (1, T, H, K)
    for i, (t0, t1) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        hi = DeepMemoryState(tuple(w[i:i + 1] for w in h0.weights),
                             tuple(z[i:i + 1] for z in h0.momentum) if momentum else None)
        if t1 == t0:
            assert all(torch.equal(a[i], b[0]) for a, b in zip(final.weights, hi.weights))
            continue
        oi, si = deep_memory(q[:, t0:t1], k[:, t0:t1], v[:, t0:t1], eta[:, t0:t1], init, cfg, g=g[:, t0:t1],
                             mu=mu[:, t0:t1] if momentum else None, initial_state=hi, output_final_state=True,
                             backend=backend)
        assert rel(o[:, t0:t1], oi) < 1e-12
        for a, b in zip(final.weights, si.weights):
            assert rel(a[i:i + 1], b) < 1e-12


def test_packed_needs_batch_one():
    cfg = DeepMemoryConfig(depth=1, chunk_size=2)
    x = torch.randn(2, 4, 1, 3)
    with pytest.raises(ValueError, match="B == 1"):
        deep_memory(x, x, x, torch.rand(2, 4, 1), (torch.randn(1, 3, 3),), cfg, cu_seqlens=torch.tensor([0, 4]))
