"""The TF-FID Inception-v3: the published state-dict layout loads strictly, mismatches are named,
outputs have ADM's shapes and definitions."""

import numpy as np
import pytest
import torch

from lamamba.evaluation.features import ExtractorConfig, build_extractor
from lamamba.evaluation.inception import (FIDInceptionV3, InceptionWeightsError, load_inception,
                                          tf1_resize_bilinear)


def _conv(name, cin, cout, kh, kw=None):
    kw = kh if kw is None else kw
    return {f"{name}.conv.weight": (cout, cin, kh, kw), f"{name}.bn.weight": (cout,), f"{name}.bn.bias": (cout,),
            f"{name}.bn.running_mean": (cout,), f"{name}.bn.running_var": (cout,),
            f"{name}.bn.num_batches_tracked": ()}


def published_layout():
    """Key names and shapes of pt_inception-2015-12-05-6726825d.pth, written out independently
    of the network code (torchvision's Inception3 names, aux classifier absent, 1008-way fc)."""
    keys = {}
    for name, cin, cout, k in (("Conv2d_1a_3x3", 3, 32, 3), ("Conv2d_2a_3x3", 32, 32, 3), ("Conv2d_2b_3x3", 32, 64, 3),
                               ("Conv2d_3b_1x1", 64, 80, 1), ("Conv2d_4a_3x3", 80, 192, 3)):
        keys.update(_conv(name, cin, cout, k))
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        keys.update(_conv(f"{name}.branch1x1", cin, 64, 1))
        keys.update(_conv(f"{name}.branch5x5_1", cin, 48, 1))
        keys.update(_conv(f"{name}.branch5x5_2", 48, 64, 5))
        keys.update(_conv(f"{name}.branch3x3dbl_1", cin, 64, 1))
        keys.update(_conv(f"{name}.branch3x3dbl_2", 64, 96, 3))
        keys.update(_conv(f"{name}.branch3x3dbl_3", 96, 96, 3))
        keys.update(_conv(f"{name}.branch_pool", cin, pool, 1))
    keys.update(_conv("Mixed_6a.branch3x3", 288, 384, 3))
    keys.update(_conv("Mixed_6a.branch3x3dbl_1", 288, 64, 1))
    keys.update(_conv("Mixed_6a.branch3x3dbl_2", 64, 96, 3))
    keys.update(_conv("Mixed_6a.branch3x3dbl_3", 96, 96, 3))
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        keys.update(_conv(f"{name}.branch1x1", 768, 192, 1))
        keys.update(_conv(f"{name}.branch7x7_1", 768, c7, 1))
        keys.update(_conv(f"{name}.branch7x7_2", c7, c7, 1, 7))
        keys.update(_conv(f"{name}.branch7x7_3", c7, 192, 7, 1))
        keys.update(_conv(f"{name}.branch7x7dbl_1", 768, c7, 1))
        keys.update(_conv(f"{name}.branch7x7dbl_2", c7, c7, 7, 1))
        keys.update(_conv(f"{name}.branch7x7dbl_3", c7, c7, 1, 7))
        keys.update(_conv(f"{name}.branch7x7dbl_4", c7, c7, 7, 1))
        keys.update(_conv(f"{name}.branch7x7dbl_5", c7, 192, 1, 7))
        keys.update(_conv(f"{name}.branch_pool", 768, 192, 1))
    keys.update(_conv("Mixed_7a.branch3x3_1", 768, 192, 1))
    keys.update(_conv("Mixed_7a.branch3x3_2", 192, 320, 3))
    keys.update(_conv("Mixed_7a.branch7x7x3_1", 768, 192, 1))
    keys.update(_conv("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7))
    keys.update(_conv("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1))
    keys.update(_conv("Mixed_7a.branch7x7x3_4", 192, 192, 3))
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        keys.update(_conv(f"{name}.branch1x1", cin, 320, 1))
        keys.update(_conv(f"{name}.branch3x3_1", cin, 384, 1))
        keys.update(_conv(f"{name}.branch3x3_2a", 384, 384, 1, 3))
        keys.update(_conv(f"{name}.branch3x3_2b", 384, 384, 3, 1))
        keys.update(_conv(f"{name}.branch3x3dbl_1", cin, 448, 1))
        keys.update(_conv(f"{name}.branch3x3dbl_2", 448, 384, 3))
        keys.update(_conv(f"{name}.branch3x3dbl_3a", 384, 384, 1, 3))
        keys.update(_conv(f"{name}.branch3x3dbl_3b", 384, 384, 3, 1))
        keys.update(_conv(f"{name}.branch_pool", cin, 192, 1))
    keys.update({"fc.weight": (1008, 2048), "fc.bias": (1008,)})
    return keys


def random_published_state_dict(seed=0):
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in published_layout().items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(0, dtype=torch.long)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=gen) * 0.05
    return sd


def test_published_layout_loads_strictly(tmp_path):
    sd = random_published_state_dict()
    assert len(sd) == 566
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(sd, path)
    model = load_inception(str(path))
    loaded = model.state_dict()
    assert set(loaded) == set(sd)
    assert torch.equal(loaded["Mixed_7c.branch_pool.conv.weight"], sd["Mixed_7c.branch_pool.conv.weight"])
    # the bookkeeping counters may be absent from a file; everything else may not
    no_counters = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(no_counters, path)
    load_inception(str(path))


def test_mismatching_state_dict_names_the_keys(tmp_path):
    sd = random_published_state_dict()
    del sd["Mixed_6d.branch1x1.conv.weight"]
    sd["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    sd["fc.weight"] = torch.zeros(1000, 2048)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(InceptionWeightsError) as err:
        load_inception(str(path))
    message = str(err.value)
    assert "Mixed_6d.branch1x1.conv.weight" in message and "missing" in message
    assert "AuxLogits.fc.weight" in message and "unexpected" in message
    assert "fc.weight (file (1000, 2048), network (1008, 2048))" in message


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(InceptionWeightsError, match="not found"):
        load_inception(str(tmp_path / "nope.pth"))
    with pytest.raises(InceptionWeightsError, match="no Inception weights"):
        load_inception("")


def test_tf1_resize_samples_without_half_pixel_offset():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = tf1_resize_bilinear(x, 8)
    # output pixel i reads input position i / 2; the last one clamps to the border
    np.testing.assert_allclose(out[0, 0, 0].numpy(), [0, 0.5, 1, 1.5, 2, 2.5, 3, 3])
    np.testing.assert_allclose(out[0, 0, :, 0].numpy(), [0, 2, 4, 6, 8, 10, 12, 12])
    # downsampling 10 -> 4 reads positions 0, 2.5, 5, 7.5
    y = torch.arange(10.0).reshape(1, 1, 1, 10).expand(1, 1, 4, 10)
    np.testing.assert_allclose(tf1_resize_bilinear(y, 4)[0, 0, 0].numpy(), [0, 2.5, 5, 7.5])


def test_outputs_match_the_adm_definitions():
    torch.manual_seed(0)
    model = FIDInceptionV3().eval()
    captured = {}
    model.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.setdefault("b1x1", o))
    images = torch.randint(0, 256, (2, 3, 32, 32)).float()
    with torch.no_grad():
        out = model(images)
    assert out["pool"].shape == (2, 2048) and out["spatial"].shape == (2, 2023) and out["logits"].shape == (2, 1008)
    nhwc = captured["b1x1"][:, :7].permute(0, 2, 3, 1).reshape(2, -1)
    torch.testing.assert_close(out["spatial"], nhwc)
    torch.testing.assert_close(out["logits"], out["pool"] @ model.fc.weight.t())  # no bias


def test_inception_extractor_takes_uint8_nhwc(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(random_published_state_dict(), path)
    extractor = build_extractor(ExtractorConfig(weights=str(path), device="cpu", batch_size=2))
    images = np.random.default_rng(0).integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    feats = extractor(images)
    assert {k: v.shape for k, v in feats.items()} == {"pool": (2, 2048), "spatial": (2, 2023), "logits": (2, 1008)}
    # batch composition does not change an image's features beyond float rounding
    np.testing.assert_allclose(extractor(images[1:2])["pool"][0], feats["pool"][1], rtol=1e-4, atol=1e-5)
    assert "sha256" in extractor.name
