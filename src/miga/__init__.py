"""miga: training-free long video generation (MIGA, FIFO-Diffusion)."""
