"""Serving side: decoding, the export manifest, onnxruntime inference and the BentoML service.

Nothing in this package imports torch.
"""
