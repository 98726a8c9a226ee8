"""rsprompt: parameter-efficient multimodal segmentation of remote-sensing imagery.

Large pretrained vision encoders stay frozen; only small prompt/adapter modules and a decoder are
trained, to segment optical imagery together with a second modality (DSM or SAR).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
