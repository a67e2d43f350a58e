import pytest
import torch

from digit_recognizer.errors import ModelFileError, UnknownModelError
from digit_recognizer.models import available, build, get_spec, register
from digit_recognizer.models.storage import load_net, save_net


@pytest.mark.parametrize("name", available("net"))
def test_every_net_maps_images_to_logits(name):
    model = build(name).eval()
    logits = model(torch.rand(3, 1, 28, 28))
    assert logits.shape == (3, 10) and logits.dtype == torch.float32


def test_seed_cnn_matches_the_notebook_size():
    n_parameters = sum(p.numel() for p in build("seed-cnn").parameters())
    assert 2_680_000 < n_parameters < 2_700_000  # Keras reported ~2.69 M


def test_unknown_and_duplicate_names():
    with pytest.raises(UnknownModelError, match=r"Available: .*cnn"):
        get_spec("resnet-9000")
    with pytest.raises(ValueError, match="already registered"):
        register("cnn", kind="net")(lambda: None)


@pytest.mark.parametrize("name", available("net"))
def test_save_load_round_trip_gives_identical_outputs(tmp_path, name):
    model = build(name).eval()
    save_net(tmp_path, model, name, {})
    loaded, meta = load_net(tmp_path)
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert meta["model"] == name and meta["classes"] == list(range(10))


def test_corrupt_model_files_name_the_file(tmp_path):
    save_net(tmp_path, build("mlp"), "mlp", {})
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ModelFileError, match=r"model\.safetensors: not a readable safetensors"):
        load_net(tmp_path)
    (tmp_path / "model.json").write_text("{ not json")
    with pytest.raises(ModelFileError, match=r"model\.json: not valid JSON"):
        load_net(tmp_path)
    with pytest.raises(
        ModelFileError, match=r"nowhere/model.json: not found; is .* a trained run directory"
    ):
        load_net(tmp_path / "nowhere")
