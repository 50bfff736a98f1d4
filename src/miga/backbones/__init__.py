"""Model adapters behind the :class:`~miga.backbones.base.Backbone` interface."""
