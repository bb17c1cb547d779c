"""Benchmarks of attention_jax against PyTorch peers on the same machine.

    python -m bench.run [--quick] [--only NAME]

See BENCHMARKS.md for what each benchmark measures and the latest table.
"""
