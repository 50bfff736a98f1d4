"""``miga app``: a local Gradio web page over the public API (prompt timeline, live video, stop/resume)."""
