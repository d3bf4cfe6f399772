"""The tokenizer wrapper and streaming detokenization."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdecode.tokenizer import TextStream, Tokenizer
from model_checkpoints import EOS, SENTENCES, tokenizer_file, vocab_size


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(tokenizer_file())


def stream_all(tok, ids, context=()):
    stream = TextStream(tok, context)
    return [stream.push(i) for i in ids] + [stream.finish()]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, vocab_size() - 1), max_size=40), st.lists(st.integers(1, vocab_size() - 1), max_size=8))
def test_pieces_join_to_the_decoded_continuation(ids, context):
    """Any ids, valid UTF-8 or not: the pieces join to decode(context + ids) less decode(context);
    where the context ends inside a character that ids complete, its U+FFFD placeholders give way
    to the character, which the pieces carry."""
    tok = Tokenizer(tokenizer_file())
    whole, before = tok.decode(context + ids), tok.decode(context)
    same = 0
    while same < min(len(whole), len(before)) and whole[same] == before[same]:
        same += 1
    assert before[same:].strip("\ufffd") == ""  # only placeholders of an incomplete character change
    assert "".join(stream_all(tok, ids, context)) == whole[same:]


@pytest.mark.parametrize("text", SENTENCES + ["🙂🙂 東京", "é"])
def test_pieces_of_real_text_hold_no_replacement_character(tok, text):
    pieces = stream_all(tok, tok.encode(text))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_sentencepiece_style_leading_space_is_kept(tmp_path):
    """A Metaspace decoder drops the leading space of a decode's first token;
    a stream continuing a prompt must keep it."""
    from tokenizers import Tokenizer as HF, decoders, models, pre_tokenizers, trainers

    hf = HF(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Metaspace()
    hf.train_from_iterator(SENTENCES, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>"],
                                                          show_progress=False))
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer(str(tmp_path))
    prompt, more = tok.encode("Hello world"), tok.encode("Hello world the quick fox")[len(tok.encode("Hello world")):]
    assert tok.decode(more).startswith("the")  # alone, the space is gone
    assert "".join(stream_all(tok, more, prompt)) == " the quick fox"


def test_special_tokens_and_config(tmp_path):
    (tmp_path / "tokenizer.json").write_text(open(tokenizer_file()).read())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": EOS}, "eos_token": EOS,
                                                                "add_bos_token": True}))
    tok = Tokenizer(str(tmp_path))
    assert tok.bos_token_id == tok.eos_token_id == 0
    ids = tok.encode("Hello")
    assert ids[0] == 0 and tok.decode(ids) == "Hello"
    assert tok.decode(ids, skip_special_tokens=False) == EOS + "Hello"
    assert tok.encode("Hello", add_special_tokens=False) == ids[1:]
    assert tok.vocab_size == vocab_size()


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer(str(tmp_path))
    with pytest.raises(TypeError, match="str"):
        Tokenizer(tokenizer_file()).encode([1, 2])
