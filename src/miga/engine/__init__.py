"""The engine: pure tensor logic (queue, tiling, per-frame solvers, guidance, self-reflection, prompt
schedule). It imports no model code: a backbone is any object with the methods of
:class:`miga.backbones.base.Backbone`, which the engine calls without importing it."""
