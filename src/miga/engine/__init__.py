"""The engine: pure tensor logic (queue, tiling, per-frame solvers, guidance, self-reflection, prompt
schedule). It imports no particular model; backbones are reached only through ``miga.backbones.base``."""
