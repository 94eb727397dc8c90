"""rextransfer: fine-tune ImageNet-pretrained ReXNet on fine-grained images and compare it."""

__version__ = "0.1.0"
