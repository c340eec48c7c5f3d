"""The demo (``python -m specdecode demo``): its sections run and say what they proved, on random tiny
models (no dependence on the shipped weights)."""

from __future__ import annotations

import torch

from specdecode.decoder.model import ModelConfig, Transformer


def tiny(seed=0, max_seq_len=256) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(n_layers=2, dim=32, n_heads=4, n_kv_heads=2, max_seq_len=max_seq_len)).eval()
    with torch.no_grad():  # sharper distributions than the 0.02 init, so candidates differ in likelihood
        model.output.weight.mul_(20)
    return model


def test_demo_sections_on_a_tiny_pair_and_without_weights(tmp_path, capsys):
    from specdecode import demo
    from specdecode.decoder.train import save

    assert demo._shipped_pair(str(tmp_path)) is None
    assert "python -m specdecode.decoder.train" in capsys.readouterr().out
    for name, seed in (("target", 0), ("draft", 1)):
        save(tiny(seed=seed, max_seq_len=256), str(tmp_path / f"{name}.pt"), {})
    target, draft = demo._shipped_pair(str(tmp_path))
    threads = torch.get_num_threads()
    demo.decoding_demo(target, draft, quick=True)
    demo.best_of_n_demo(target, quick=True)
    assert torch.get_num_threads() == threads  # the sections run on one thread and restore the count
    out = capsys.readouterr().out
    assert "3. Plain vs speculative decoding" in out and "greedy, batch 1" in out
    assert "4. Best-of-N vs Speculative Rejection" in out and "SpecRej, N = 16, alpha = 0.5" in out
