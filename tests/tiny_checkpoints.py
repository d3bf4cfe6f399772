"""Tiny Llama checkpoints written with NumPy and safetensors, for tests
that need a model whose output they script: a byte-level tokenizer with no
merges (every byte is a token, so a 4-byte character is 4 tokens) and two
special tokens, and a logits processor that makes the model say given text."""
import json
import os

import numpy as np

EOS, IM_END = "<|endoftext|>", "<|im_end|>"
SMILE = "🙂"  # 4 bytes in UTF-8


# ---------------------------------------------------------------------------
# A tiny checkpoint
# ---------------------------------------------------------------------------

def write_tokenizer(directory):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS, IM_END])  # ids 256, 257
    tok.save(os.path.join(directory, "tokenizer.json"))


CONFIG = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=258, hidden_size=16,
              intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
              max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=256,
              eos_token_id=256, rope_theta=10000.0)


def llama_tensors(c: dict, layers: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = d // c["num_attention_heads"]
    hq, hkv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd

    def w(*shape):
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)

    t = {"model.embed_tokens.weight": w(v, d), "model.norm.weight": np.ones(d, np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": np.ones(d, np.float32),
                  p + "post_attention_layernorm.weight": np.ones(d, np.float32),
                  p + "self_attn.q_proj.weight": w(hq, d), p + "self_attn.k_proj.weight": w(hkv, d),
                  p + "self_attn.v_proj.weight": w(hkv, d), p + "self_attn.o_proj.weight": w(d, hq),
                  p + "mlp.gate_proj.weight": w(f, d), p + "mlp.up_proj.weight": w(f, d),
                  p + "mlp.down_proj.weight": w(d, f)})
    return t


def tiny(directory, config=None, layers=None, tensors=None, generation_config=None):
    """Write a tiny Llama checkpoint (+ tokenizer) to `directory`; return its path."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    c = dict(CONFIG, **(config or {}))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(c, f)
    full = dict(CONFIG, **{k: v for k, v in (config or {}).items() if isinstance(v, int) and not isinstance(v, bool)
                           and k in CONFIG and v > 0})
    save_file(tensors if tensors is not None else llama_tensors(full, layers or full["num_hidden_layers"]),
              os.path.join(directory, "model.safetensors"))
    write_tokenizer(directory)
    if generation_config is not None:
        with open(os.path.join(directory, "generation_config.json"), "w") as f:
            json.dump(generation_config, f)
    return str(directory)


def ids(model, text):
    return model.tokenizer.encode(text)


def script(model, prompt_len, *parts):
    """A logits processor that makes the model say `parts` (texts, or token ids) in order."""
    wanted = [t for p in parts for t in (ids(model, p) if isinstance(p, str) else [p])]

    def say(history, logits):
        out = np.full_like(logits, -np.inf)
        step = history.shape[1] - prompt_len
        out[:, wanted[min(step, len(wanted) - 1)]] = 0.0
        return out

    return say, len(wanted)
