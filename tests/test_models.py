import pytest
import torch

from r1lab.models import (R1_ZERO_PREFIX, R1_ZERO_SUFFIX, build_tiny_model, build_tiny_tokenizer, load_model,
                          load_tokenizer, save_model, save_weights)

TEXT = R1_ZERO_PREFIX + "347+589" + R1_ZERO_SUFFIX + " <think>7+9=16 4+8+1=13</think>\n<answer>936</answer>"


def test_tiny_tokenizer_round_trip_keeps_spaces_and_tags():
    tok = build_tiny_tokenizer()
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == TEXT
    assert tok.decode(ids, skip_special_tokens=True) == TEXT  # tags are not special: rewards must see them
    # template pieces and tags are single tokens
    assert len(tok(R1_ZERO_PREFIX, add_special_tokens=False)["input_ids"]) == 1
    assert len(tok("<think>", add_special_tokens=False)["input_ids"]) == 1


def test_tiny_checkpoint_round_trip(tmp_path):
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    save_model(model, tok, tmp_path / "ck")
    assert (tmp_path / "ck" / "r1lab_tiny.json").is_file()
    model2, tok2 = load_model(str(tmp_path / "ck"))
    assert tok2.decode(tok2(TEXT, add_special_tokens=False)["input_ids"]) == TEXT
    x = torch.tensor([tok(TEXT, add_special_tokens=False)["input_ids"]])
    assert torch.allclose(model(x).logits, model2(x).logits, atol=1e-6)
    # plain transformers loads the weights too
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ck")
    assert torch.allclose(model(x).logits, plain(x).logits, atol=1e-6)
    plain_tok = PreTrainedTokenizerFast.from_pretrained(tmp_path / "ck")
    assert plain_tok.decode(plain_tok(TEXT)["input_ids"]) == TEXT


def test_atomic_save_replaces_and_leaves_no_temporaries(tmp_path):
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    save_model(model, tok, tmp_path / "ck")
    save_model(model, tok, tmp_path / "ck")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model path not found"):
        load_model(str(tmp_path / "nope"))


def make_real_architecture(tmp_path, arch):
    """A tiny random model of a real architecture with a real BPE tokenizer, built on the spot (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
                              Qwen2ForCausalLM)

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(["347+589 so 936 <think> </think> <answer> </answer>"] * 20, trainer)
    from tokenizers import decoders

    raw.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    model = (Qwen2ForCausalLM(Qwen2Config(**common)) if arch == "qwen2"
             else LlamaForCausalLM(LlamaConfig(**common)))
    path = tmp_path / arch
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_load_real_architectures_by_path(tmp_path, arch):
    path = make_real_architecture(tmp_path, arch)
    model, tok = load_model(str(path))
    assert model.config.model_type == arch
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert tok.decode(tok("347+589 so 936")["input_ids"]) == "347+589 so 936"


def test_save_weights_of_a_plain_model_is_save_pretrained(tmp_path):
    model, _ = load_model(str(make_real_architecture(tmp_path, "qwen2")))
    save_weights(model, tmp_path / "copy")
    assert (tmp_path / "copy" / "model.safetensors").is_file() and not (tmp_path / "copy" / "adapter").exists()
    copy = type(model).from_pretrained(tmp_path / "copy")
    assert all(torch.equal(v, copy.state_dict()[k]) for k, v in model.state_dict().items())


def test_task_word_tokens_only_when_the_corpus_uses_them():
    from r1lab.tasks import get_task
    from r1lab.train.pretrain import PretrainConfig, tokenizer_words

    task = get_task("arithmetic", digits=2)
    assert tokenizer_words(task, PretrainConfig(styles={"worked": 1.0, "plain": 1.0})) is None
    assert "so" in tokenizer_words(task, PretrainConfig(styles={"worked_mixed": 1.0}))
    tok = build_tiny_tokenizer(tokenizer_words(task, PretrainConfig(styles={"worked": 1.0})))
    assert len(tok(" so 126", add_special_tokens=False)["input_ids"]) == 7  # characters, as in the measured demo
