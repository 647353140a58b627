"""HPA DPN-UNet: state_dict layout, restricted loading of whole-module pickles, inference."""

import json
import pickle
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hpasc.errors import InputError
from hpasc.segment import dpn_unet as ours
from hpasc.segment import get_segmenter
from hpasc.segment.dpn_unet import DPNUnet
from hpasc.segment.hpa_weights import load_weights, read_state_dict
from hpasc.segment.presets import Box, get_preset

REFERENCE = Path(__file__).parents[2] / "shared/reference"
ZOO_MODULES = {
    "DPNUnet": "pytorch_zoo.unet",
    "ConvBottleneck": "pytorch_zoo.abstract_model",
    "UnetDecoderBlock": "pytorch_zoo.abstract_model",
    "DualPathBlock": "pytorch_zoo.dpn",
    "BnActConv2d": "pytorch_zoo.dpn",
    "CatBnAct": "pytorch_zoo.dpn",
}


@pytest.fixture(scope="module")
def network() -> DPNUnet:
    torch.manual_seed(0)
    return DPNUnet().eval()


@pytest.mark.parametrize(
    "tsv", ["hpa-unet-nuclei.state_dict.tsv", "hpa-unet-cell-3ch.state_dict.tsv"]
)
def test_state_dict_keys_shapes_and_dtypes_match_published_models(tsv):
    with torch.device("meta"):
        model = DPNUnet()
    rows = (REFERENCE / tsv).read_text().splitlines()[1:]
    published = [(k, json.loads(shape), dtype) for k, shape, dtype in (r.split("\t") for r in rows)]
    mine = [
        (k, list(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
    ]
    assert mine == published  # same keys, same order, same shapes and dtypes
    assert sum(p.numel() for p in model.parameters()) == 139_108_867


def _fake_zoo_pickle(model: DPNUnet, path: Path, legacy: bool) -> None:
    """torch.save ``model`` as a whole module whose classes live in a fake ``pytorch_zoo``."""
    fakes = {}
    for name, module_name in ZOO_MODULES.items():
        fakes[name] = type(name, (nn.Module,), {"__module__": module_name})
    modules = {"pytorch_zoo": types.ModuleType("pytorch_zoo")}
    for name, module_name in ZOO_MODULES.items():
        module = modules.setdefault(module_name, types.ModuleType(module_name))
        setattr(module, name, fakes[name])
    originals = {m: type(m) for m in model.modules()}
    try:
        sys.modules.update(modules)
        for m in model.modules():
            if type(m).__module__ == ours.__name__:
                m.__class__ = fakes[type(m).__name__]
        # The real files store these class objects as plain attributes, too.
        model.bottleneck_type = fakes["ConvBottleneck"]
        model.decoder_block = fakes["UnetDecoderBlock"]
        with warnings.catch_warnings():  # torch cannot find the source of classes made here
            warnings.simplefilter("ignore")
            torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    finally:
        for m, cls in originals.items():
            m.__class__ = cls
        for attr in ("bottleneck_type", "decoder_block"):
            model.__dict__.pop(attr, None)
        for name in modules:
            sys.modules.pop(name, None)


@pytest.mark.slow
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-format", "zip-format"])
def test_whole_module_pickle_loads_without_pytorch_zoo(network, tmp_path, legacy):
    path = tmp_path / "dpn_unet_nuclei_v1.pth"
    _fake_zoo_pickle(network, path, legacy)
    assert "pytorch_zoo" not in sys.modules
    with torch.device("meta"):
        target = DPNUnet()
    load_weights(target, path)
    expected = network.state_dict()
    loaded = target.state_dict()
    assert list(loaded) == list(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_plain_state_dict_loads_and_old_files_may_lack_batch_counters(network, tmp_path):
    state = {k: v for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "state.pth"
    torch.save({"module." + k: v for k, v in state.items()}, path)  # as from a DataParallel
    target = load_weights(DPNUnet(), path)
    assert torch.equal(target.final[0].weight, network.final[0].weight)
    assert int(target.encoder_stages[0][1].num_batches_tracked) == 0


def test_wrong_state_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(InputError, match="not an HPA DPN-UNet"):
        load_weights(DPNUnet(), path)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickle_calling_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"weight": _Exploit(marker)}, path)
    with pytest.raises(InputError, match=r"refusing to load global (os|posix)\.system"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [nn.Linear(2, 2), {"w": __import__("collections").Counter()}],
    ids=["unlisted-torch-class", "unlisted-stdlib-class"],
)
def test_any_unlisted_global_is_refused(tmp_path, payload):
    path = tmp_path / "other.pth"
    torch.save(payload, path)
    with pytest.raises(InputError, match="refusing to load global"):
        read_state_dict(path)


def test_restricted_unpickler_refuses_outside_torch_load():
    from hpasc.segment.hpa_weights import RefusedGlobal, restricted_pickle

    data = pickle.dumps(print)
    with pytest.raises(RefusedGlobal):
        restricted_pickle.load(__import__("io").BytesIO(data))


def test_missing_weight_file_says_where_the_weights_are(tmp_path):
    missing = tmp_path / "dpn_unet_nuclei_v1.pth"
    with pytest.raises(InputError) as info:
        get_segmenter("hpa-unet", nuclei_model=missing, cell_model=missing)
    message = str(info.value)
    assert "\n" not in message
    assert str(missing) in message and "4665863" in message
    assert "dpn_unet_cell_3ch_v1.pth" in message and "hpasc weights download" in message


@pytest.mark.parametrize("preset", ["hpacellseg", "fast"])
@pytest.mark.parametrize(("side", "padded"), [(2048, 512), (1728, 480), (3072, 768), (100, 64)])
def test_input_padding_reaches_a_multiple_of_32(preset, side, padded):
    nuclei_x, cell_x, box = get_preset(preset).prepare(
        np.zeros((side, side, 4), np.uint8), two_channel=False
    )
    assert cell_x.shape == nuclei_x.shape == (3, padded, padded) and cell_x.dtype == np.float32
    assert (box.rows, box.cols) == (round(side * 0.25),) * 2
    assert box.top == box.left == (0 if padded == side // 4 else 32)


@pytest.mark.parametrize("side", [1728, 2048, 3072, 300])
def test_pfcell_preset_feeds_512_px_without_padding(side):
    image = np.zeros((side, side, 4), np.uint8)
    nuclei_x, cell_x, box = get_preset("pfcell-2021").prepare(image, two_channel=False)
    assert nuclei_x.shape == cell_x.shape == (3, 512, 512) and box == Box(0, 0, 512, 512)


@pytest.mark.parametrize("preset", ["hpacellseg", "pfcell-2021", "fast"])
def test_normalisation_constants(preset):
    image = np.full((64, 64, 4), 255, np.uint8)
    options = {} if preset == "pfcell-2021" else {"scale_factor": 1.0}
    nuclei_x, cell_x, _ = get_preset(preset, **options).prepare(image, two_channel=False)
    expected = [(1 - m) * 0.0167 * 255 for m in (124 / 255, 117 / 255, 104 / 255)]
    assert np.allclose(cell_x[:, 0, 0], expected, atol=1e-5)
    # pfcell-2021 normalises the blue plane once (blue's mean) and feeds it three times.
    nuclei_expected = [expected[2]] * 3 if preset == "pfcell-2021" else expected
    assert np.allclose(nuclei_x[:, 0, 0], nuclei_expected, atol=1e-5)


def test_two_channel_model_sees_no_er():
    image = np.full((64, 64, 4), 200, np.uint8)
    _, cell_x, _ = get_preset("hpacellseg", scale_factor=1.0).prepare(image, two_channel=True)
    assert np.allclose(cell_x[1], (0 - 117 / 255) * 0.0167 * 255, atol=1e-5)


def test_preset_errors():
    with pytest.raises(ValueError, match="unknown hpa-unet preset"):
        get_preset("upstream")
    with pytest.raises(ValueError, match="512 px"):
        get_preset("pfcell-2021", scale_factor=0.25)


@pytest.mark.slow
def test_1728_px_field_through_random_network_gives_full_size_masks(network):
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (1728, 1728, 4), dtype=np.uint8),
        np.zeros((300, 200, 4), np.uint8),
    ]
    for preset in ("hpacellseg", "pfcell-2021", "fast"):
        # pfcell-2021 always runs at 512 px; the others at 1/8 of the side to stay cheap.
        shrink = {} if preset == "pfcell-2021" else {"scale_factor": 0.125}
        segmenter = get_segmenter(
            "hpa-unet",
            nuclei_model=network,
            cell_model=network,
            preset=preset,
            batch_size=2,
            device="cpu",
            **shrink,
        )
        results = segmenter.segment_batch(images)
        assert [r.cells.shape for r in results] == [(1728, 1728), (300, 200)]
        assert all(r.cells.dtype == np.uint16 and r.nuclei.shape == r.cells.shape for r in results)


def test_maps_reach_the_label_grid_by_pixel_replication():
    from hpasc.segment.base import resize_labels

    rng = np.random.default_rng(0)
    prob = rng.random((3, 256, 128)).astype(np.float32)  # a 1024 x 512 field at scale 0.25
    preset = get_preset("fast", label_scale=1.0)
    nuclei, cell, scale = preset.restore(prob, prob, Box(0, 0, 256, 128), (1024, 512))
    assert scale == 1.0
    assert nuclei.shape == cell.shape == (2048, 1024, 3)  # 2048·s along the longer side
    expected = np.clip(np.rint(prob.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
    expected[..., 0] = 0
    replicated = expected.repeat(8, axis=0).repeat(8, axis=1)
    assert np.array_equal(nuclei, replicated) and np.array_equal(cell, replicated)
    labels = rng.integers(0, 300, (64, 32)).astype(np.uint16)
    assert np.array_equal(resize_labels(labels, (256, 128)), labels.repeat(4, 0).repeat(4, 1))
