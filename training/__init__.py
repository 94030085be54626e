"""Training side: data, timm models, the training loop, evaluation and export (needs torch)."""
