"""Constants that several layers share, each defined once (as timm keeps them in ``data/constants.py``)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # normalization of 0..1 RGB pixels: the smp encoders' default
IMAGENET_STD = (0.229, 0.224, 0.225)
