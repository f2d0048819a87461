"""minimoe.sampling: top-k and top-p restrict the support, and sampling follows the distribution."""

import torch

from minimoe.sampling import sample_next


def test_sample_next_top_k_and_top_p_restrict_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(2000, 4)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_p=0.7, generator=g).tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.8
    assert set(sample_next(logits, 1.0, top_p=0.5, generator=g).tolist()) == {0}
    assert set(sample_next(logits, 1.0, generator=g).tolist()) == {0, 1, 2, 3}
    counts = torch.bincount(sample_next(logits, 1.0, generator=g), minlength=4) / 2000
    torch.testing.assert_close(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.04, rtol=0)
    torch.testing.assert_close(sample_next(logits[:3], 0.0), torch.zeros(3, dtype=torch.long))
