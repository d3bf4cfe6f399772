"""`fastdecode batch`: JSONL in and out; a run killed with SIGKILL and rerun
writes every id exactly once with the results of an uninterrupted run; a
partial last line is dropped; bad lines are reported with their number."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fastdecode import batch_io
from model_checkpoints import checkpoint, prompt_ids


@pytest.fixture(scope="module")
def model_dir():
    return checkpoint("llama-gqa-tied")


def write_lines(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def job_records(n=30):
    records = []
    for i in range(n):
        r = {"id": f"row-{i}", "prompt": prompt_ids(3 + (7 * i) % 50, seed=i), "max_new_tokens": 20 + (13 * i) % 60,
             "ignore_eos": True}
        if i % 3 == 1:
            r["do_sample"] = True  # seeded by --seed and the id
        if i % 3 == 2:
            r.update(do_sample=True, temperature=0.7, seed=i)
        records.append(r)
    return records


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "fastdecode", "batch", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def read_output(path):
    with open(path) as f:
        text = f.read()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.split("\n")[:-1]]


def test_killed_run_resumes_without_loss_or_duplicates(model_dir, tmp_path):
    records = job_records()
    src, clean, resumed = tmp_path / "in.jsonl", tmp_path / "clean.jsonl", tmp_path / "resumed.jsonl"
    write_lines(src, records)
    common = ["-m", model_dir, "--input", str(src), "--max-batch", "3", "--seed", "5", "--prefill-chunk", "16"]
    p = cli(*common, "--output", str(clean))
    assert p.wait(timeout=600) == 0, p.stderr.read()
    want = {r["id"]: r for r in read_output(clean)}
    assert sorted(want) == sorted(r["id"] for r in records)

    kills = 0
    for attempt in range(3):  # kill twice in mid-run, then let it finish
        p = cli(*common, "--output", str(resumed))
        if attempt < 2:
            before = resumed.read_text().count("\n") if resumed.exists() else 0
            deadline = time.time() + 300
            while time.time() < deadline and p.poll() is None:
                if resumed.exists() and resumed.read_text().count("\n") >= before + 4:
                    break
                time.sleep(0.02)
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                kills += 1
            p.wait(timeout=60)
            with open(resumed, "a") as f:  # what a kill in mid-write leaves
                f.write('{"id": "row-1", "text": "hal')
        else:
            assert p.wait(timeout=600) == 0, p.stderr.read()
            assert "dropped a partial last line" in p.stderr.read()
    assert kills == 2
    got = read_output(resumed)
    assert len(got) == len(records)  # every id exactly once
    assert {r["id"]: r for r in got} == want  # and the uninterrupted run's results, sampled rows included


def test_partial_last_line_is_dropped(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": 1, "text": "a"}\n{"id": "1", "text": "b"}\n{"id": 3, "te')
    done = batch_io.completed_ids(str(out), log=open(os.devnull, "w"))
    assert done == {batch_io.id_key(1), batch_io.id_key("1")}
    assert out.read_text() == '{"id": 1, "text": "a"}\n{"id": "1", "text": "b"}\n'
    out.write_text('{"id": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"out.jsonl:2: not a result line"):
        batch_io.completed_ids(str(out))


BAD = ['{"id": "a", "prompt": "Hello"}', "{not json", '{"id": "a", "prompt": "again"}',
       '{"id": "c", "prompt": "x", "temprature": 1}', '["a list"]', '{"id": "d"}',
       '{"id": "e", "messages": [{"role": "user", "content": "hi"}]}', "",
       '{"id": "f", "prompt": "Hello", "max_new_tokens": 1000}', '{"id": "g", "prompt": "fine"}']


@pytest.mark.parametrize("mode", ["skip", "stop"])
def test_bad_lines_are_reported_with_their_number(model_dir, tmp_path, mode):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(src, BAD)
    p = cli("-m", model_dir, "--input", str(src), "--output", str(out), "-n", "4", "--on-error", mode)
    assert p.wait(timeout=300) == 1
    err = p.stderr.read()
    ids = [r["id"] for r in read_output(out)]
    if mode == "skip":
        for line in (2, 3, 4, 5, 6, 7, 9):
            assert f"in.jsonl:{line}" in err, err
        assert "appears again" in err and "temprature" in err and "chat template" in err and "needs" in err
        assert sorted(ids) == ["a", "g"] and "7 bad line(s)" in err
    else:
        assert "in.jsonl:2:" in err and "stopping" in err and "in.jsonl:3" not in err
        assert ids == ["a"] and "1 bad line(s)" in err


def test_missing_ids_default_to_the_line_number(model_dir, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(src, ['{"prompt": "Hello"}', "", '{"prompt": [5, 6, 7], "max_new_tokens": 3}'])
    p = cli("-m", model_dir, "--input", str(src), "--output", str(out), "-n", "5")
    assert p.wait(timeout=300) == 0, p.stderr.read()
    got = {r["id"]: r for r in read_output(out)}
    assert sorted(got) == [1, 3]
    assert got[3]["generated_tokens"] == 3 and got[3]["prompt_tokens"] == 3
    assert got[1]["generated_tokens"] <= 5 and got[1]["finish_reason"] in ("length", "eos")


def test_progress_bar_shows_rows_and_tokens_per_second(model_dir, tmp_path, capsys):
    import fastdecode
    from fastdecode.generation import GenerationConfig

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(src, [{"id": i, "prompt": prompt_ids(4, seed=i)} for i in range(5)])
    stats = batch_io.run_job(fastdecode.load(model_dir), str(src), str(out), GenerationConfig(max_new_tokens=6),
                             max_batch=2, progress=True)
    err = capsys.readouterr().err
    assert "5/5" in err and "tokens/s" in err
    assert stats["written"] == 5 and stats["generated_tokens"] == sum(r["generated_tokens"] for r in read_output(out))


def test_weights_format_flag(model_dir, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(src, [{"id": 1, "prompt": [5, 6, 7]}])
    p = cli("-m", model_dir, "--input", str(src), "--output", str(out), "-n", "3", "--weights", "no-such-format")
    assert p.wait(timeout=300) == 2 and "no-such-format" in p.stderr.read() and not out.exists()
    p = cli("-m", model_dir, "--input", str(src), "--output", str(out), "-n", "3", "--weights", "f16")
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert read_output(out)[0]["generated_tokens"] == 3


def test_messages_lines_answer_as_model_chat(tmp_path):
    """{"messages": [...]} lines: the chat template's prompt and end-of-turn stop, model.chat's text."""
    import fastdecode
    from chat_checkpoints import chat_checkpoint

    chats = [[{"role": "user", "content": "Hi"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello 東京"}]]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(src, [{"id": "c0", "messages": chats[0], "max_new_tokens": 15},
                      {"id": "c1", "messages": chats[1], "do_sample": True, "seed": 3, "max_new_tokens": 15},
                      {"id": "bad", "messages": "not a list"}, {"id": "p", "prompt": "Hello"}])
    p = cli("-m", chat_checkpoint(), "--input", str(src), "--output", str(out), "-n", "15", "--on-error", "skip")
    assert p.wait(timeout=300) == 1
    assert "in.jsonl:3 (id \"bad\"): messages must be a list" in p.stderr.read()
    got = {r["id"]: r for r in read_output(out)}
    m = fastdecode.load(chat_checkpoint(), prefix_cache_mb=0)
    for rid, messages, settings in (("c0", chats[0], {}), ("c1", chats[1], {"do_sample": True, "rng": 3})):
        w = m.chat(messages, max_new_tokens=15, **settings)
        assert (got[rid]["text"], got[rid]["token_ids"], got[rid]["finish_reason"]) == \
            (w.text, w.token_ids, w.finish_reason)
    assert sorted(got) == ["c0", "c1", "p"]
