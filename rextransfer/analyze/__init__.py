"""The paper's rank (expressiveness) measures: single layers (layers.py) and the features of
trained or pretrained models (features.py)."""
