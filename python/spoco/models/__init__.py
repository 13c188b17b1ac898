"""Embedding networks: the U-Nets of the paper's appendix A.1 (Tables 6–8)."""
from .unet import UNet, UNet2D, UNet3D, receptive_field, choose_depth

__all__ = ["UNet", "UNet2D", "UNet3D", "receptive_field", "choose_depth"]
