"""U-Net shapes, depth rule and receptive field."""
import pytest
import torch

from spoco.models import UNet, UNet2D, UNet3D, choose_depth, receptive_field


@pytest.mark.parametrize("spatial", [(37, 51), (64, 64), (1, 9), (5, 3)])
def test_unet2d_output_shape_for_any_input_size(spatial, seed):
    torch.manual_seed(seed % 2**63)
    net = UNet2D(2, 7, f_maps=4, depth=3).eval()
    out = net(torch.randn(3, 2, *spatial))
    assert out.shape == (3, 7, *spatial)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("spatial", [(9, 17, 20), (8, 16, 16), (3, 5, 7)])
def test_unet3d_output_shape_for_any_input_size(spatial, seed):
    torch.manual_seed(seed % 2**63)
    net = UNet3D(1, 5, f_maps=4, depth=3).eval()
    assert isinstance(net.encoders[0][1], torch.nn.GroupNorm)  # 3D default: group norm (paper, A.1)
    assert net(torch.randn(1, 1, *spatial)).shape == (1, 5, *spatial)


def test_paper_architecture_widths():
    # Table 7: ConvBlockGN 64, 128, 256, 512 (3D, four levels), d = 16.
    net = UNet3D(1, 16, f_maps=64, patch_shape=(40, 64, 64))
    assert net.depth == 4
    assert [enc[0].out_channels for enc in net.encoders] == [64, 128, 256, 512]
    assert [dec[0].in_channels for dec in net.decoders] == [256 + 512, 128 + 256, 64 + 128]
    assert net.head.out_channels == 16


def _empirical_receptive_field(depth: int) -> int:
    """Extent of the input pixels that influence the bottleneck's central feature."""
    net = UNet(2, 1, 1, f_maps=1, depth=depth, norm="none")
    for p in net.parameters():
        torch.nn.init.constant_(p, 0.1)
    size = 2 * receptive_field(depth) + 2 ** depth
    x = torch.ones(1, 1, 1, size, requires_grad=True)
    h = x
    for level, enc in enumerate(net.encoders):
        if level:
            # Average pooling has the max-pool's support but passes gradient to every input.
            h = torch.nn.functional.avg_pool2d(h, (1, 2))
        h = _conv_block_1d(enc, h)
    h[0, 0, 0, h.shape[-1] // 2].backward()
    nz = torch.nonzero(x.grad[0, 0, 0]).ravel()
    return int(nz.max() - nz.min() + 1)


def _conv_block_1d(block, h):
    # Convolve along the last axis only, with the blocks' 3-tap kernels (centre row).
    for layer in block:
        if isinstance(layer, torch.nn.Conv2d):
            h = torch.nn.functional.conv2d(h, layer.weight[:, :, 1:2, :], layer.bias, padding=(0, 1))
        else:
            h = layer(h)
    return h


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_receptive_field_matches_gradient_support(depth):
    assert _empirical_receptive_field(depth) == receptive_field(depth)


def test_choose_depth_covers_patch():
    for patch in [(64, 64), (128, 128), (40, 64, 64), (448, 448), (16, 300)]:
        d = choose_depth(patch)
        assert receptive_field(d) >= max(patch) or min(patch) < 2 ** (d + 1) or d == 7
        assert d == 2 or receptive_field(d - 1) < max(patch)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ndim=4), "ndim"), (dict(ndim=2, norm="layer"), "norm"), (dict(ndim=2, f_maps=0), "f_maps"),
    (dict(ndim=2, depth=0), "depth"), (dict(ndim=2, in_channels=1.5), "in_channels"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


def test_wrong_input_rank():
    with pytest.raises(ValueError, match="spatial axes"):
        UNet2D(1, 2, depth=2)(torch.zeros(1, 1, 4, 4, 4))
