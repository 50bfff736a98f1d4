"""The built-in model: its networks (``nets``) and how they are trained (``train``)."""
