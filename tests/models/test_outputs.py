"""Network outputs: embeddings, foreground logit, spatial coordinates."""
import numpy as np
import pytest
import torch

from spoco.models import UNet2D
from spoco.models.outputs import add_coordinates, split_output
from spoco.data import normalize_image
from spoco.predict import predict


def test_add_coordinates_values():
    emb = torch.zeros(2, 4, 3, 5)
    out = add_coordinates(emb, 2.0, origin=(10, 20))
    np.testing.assert_allclose(out[1, 0, :, 0].numpy(), [5.0, 5.5, 6.0])
    np.testing.assert_allclose(out[0, 1, 0].numpy(), (20 + np.arange(5)) / 2.0)
    assert (out[:, 2:] == 0).all()
    assert add_coordinates(emb, None) is emb


def test_split_output():
    net = UNet2D(1, 4, f_maps=4, depth=2, foreground=True)
    out = net(torch.zeros(1, 1, 8, 8))
    assert out.shape == (1, 5, 8, 8)
    emb, logits = split_output(out, net)
    assert emb.shape == (1, 4, 8, 8) and logits.shape == (1, 8, 8)
    plain = UNet2D(1, 4, f_maps=4, depth=2)
    assert split_output(plain(torch.zeros(1, 1, 8, 8)), plain)[1] is None


def test_unet_config_round_trip_and_errors():
    net = UNet2D(1, 4, f_maps=4, depth=2, foreground=True, spatial_scale=3.5)
    copy = UNet2D(**{k: v for k, v in net.config.items() if k != "ndim"})
    copy.load_state_dict(net.state_dict())  # the label_rate buffer travels with the weights
    assert copy.foreground and copy.spatial_scale == 3.5
    with pytest.raises(ValueError, match="spatial_scale"):
        UNet2D(1, 4, spatial_scale=0)
    with pytest.raises(ValueError, match="out_channels >= ndim"):
        UNet2D(1, 1, spatial_scale=2.0)


def test_spatial_prediction_tiled_equals_whole(rng, seed):
    # Coordinates are those of the whole image, so tiles agree with one whole-image pass.
    torch.manual_seed(seed % 2**63)
    net = UNet2D(1, 4, f_maps=4, depth=3, foreground=True, spatial_scale=5.0).eval()
    net.label_rate.fill_(0.4)
    image = rng.random((60, 76)).astype(np.float32)
    whole = predict(net, image, halo=32, device="cpu")
    tiled = predict(net, image, tile_shape=(24, 32), halo=32, device="cpu")
    assert whole.shape == (5, 60, 76)
    np.testing.assert_allclose(tiled, whole, atol=1e-4, err_msg=str(seed))
    assert 0 <= whole[-1].min() and whole[-1].max() <= 1
    # The spatial channels grow with the coordinates, the others do not.
    with torch.no_grad():
        raw = net(torch.from_numpy(normalize_image(image[None]))[None])[0].numpy()
    np.testing.assert_allclose(whole[0] - raw[0], np.arange(60)[:, None] / 5.0 + 0 * raw[0], atol=1e-3)
    np.testing.assert_allclose(whole[2], raw[2], atol=1e-4)


def test_predict_refuses_a_stack_for_a_2d_one_channel_model(rng):
    net = UNet2D(1, 4, f_maps=4, depth=2)
    with pytest.raises(ValueError, match="predict each slice"):
        predict(net, rng.random((5, 16, 16)).astype(np.float32), device="cpu")
