"""One contender's timed runs, in a process of its own (see peers.py).

Run as ``python -c <this file's text> <request JSON>`` by the interpreter
chosen for the engine (it may lack this version of fastdecode: this file
imports only the engine it runs). Prints one JSON line:
``{"full_s", "one_s", "ids", "n_one", "ttft_s", "perf"}`` —
seconds of generate(new_tokens) and generate(1) after the same prompt (each
after one warm-up run), the token ids of the full run, the number of tokens
the one-token run made, and (when asked) the seconds of generate(1) after
the long prompt (the second of two such runs).
"""
import json
import os
import sys
import time


# ---------------------------------------------------------------------------
# Engines: load(req) -> run(prompt ids, n new tokens) -> new token ids
# ---------------------------------------------------------------------------

def fastdecode_engine(req):
    import fastdecode as fd

    fd.set_num_threads(req["threads"])
    weights = None if req["format"] == "float32" else req["format"]
    model = fd.load(req["path"], weights=weights, prefix_cache_mb=0)  # every run prefills its prompt

    def run(prompt, n):
        return list(model.generate(prompt, max_new_tokens=n, ignore_eos=True).token_ids)
    return run, lambda: {"weight_bytes_per_token": int(model.weights.nbytes_per_token())}


def llama_cpp_engine(req):
    import llama_cpp

    n = req["threads"]
    llm = llama_cpp.Llama(model_path=req["path"], n_ctx=req["n_ctx"], n_threads=n, n_threads_batch=n,
                          seed=0, verbose=False)

    def run(prompt, new):
        llm.reset()  # generate() would reuse the KV cache of a shared prefix: every run prefills its prompt
        llama_cpp.llama_perf_context_reset(llm.ctx)  # its timers then cover this run alone
        out = []
        for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(token))  # generate() never stops at eos by itself
            if len(out) == new:
                return out

    def perf():  # llama.cpp's own timers of the last run (llama_perf_context)
        p = llama_cpp.llama_perf_context(llm.ctx)
        return {"t_p_eval_ms": p.t_p_eval_ms, "n_p_eval": p.n_p_eval, "t_eval_ms": p.t_eval_ms, "n_eval": p.n_eval}
    return run, perf


def ctranslate2_engine(req):
    import ctranslate2

    generator = ctranslate2.Generator(req["path"], device="cpu", compute_type=req["format"],
                                      intra_threads=req["threads"], inter_threads=1)
    with open(os.path.join(req["path"], "vocabulary.json")) as f:
        vocab = json.load(f)

    def run(prompt, n):
        # min_length = max_length: eos cannot end a run early; end_token=[]: no end token at all
        res = generator.generate_batch([[vocab[i] for i in prompt]], max_length=n, min_length=n, sampling_topk=1,
                                       beam_size=1, end_token=[], include_prompt_in_result=False)
        return list(res[0].sequences_ids[0])
    return run, None


def onnxruntime_genai_engine(req):
    import onnxruntime_genai as og

    config = og.Config(req["path"])
    n = req["threads"]
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": n, "inter_op_num_threads": 1}}}}))
    model = og.Model(config)

    def run(prompt, new):
        params = og.GeneratorParams(model)
        length = len(prompt) + new  # genai's lengths count the prompt
        params.set_search_options(max_length=length, min_length=length, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt)
        out = []
        while not generator.is_done():
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
        return out
    return run, None


def transformers_engine(req):
    import torch
    import transformers

    torch.set_num_threads(req["threads"])
    model = transformers.AutoModelForCausalLM.from_pretrained(req["path"], dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # like ignore_eos
    model.generation_config.pad_token_id = 0

    def run(prompt, n):
        ids = torch.tensor([prompt])
        with torch.no_grad():  # the mask given: else every prompt id equal to pad_token_id is masked out
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False)
        return out[0, len(prompt):].tolist()
    return run, None


ENGINES = {"fastdecode": fastdecode_engine, "llama.cpp": llama_cpp_engine, "ctranslate2": ctranslate2_engine,
           "onnxruntime-genai": onnxruntime_genai_engine, "transformers": transformers_engine}


def timed(run, prompt, n):
    t0 = time.perf_counter()
    ids = run(prompt, n)
    return time.perf_counter() - t0, ids


def main(req):
    run, perf = ENGINES[req["engine"]](req)
    prompt, n = req["prompt"], req["new_tokens"]
    run(prompt, 2)  # warm-up: first-call costs (allocation, lazy init, page faults)
    full_s, ids = timed(run, prompt, n)
    out = {"full_s": full_s, "ids": ids}
    if perf:
        out["perf"] = perf()
    out["one_s"], one = timed(run, prompt, 1)
    out["n_one"] = len(one)
    if req.get("long_prompt"):
        timed(run, req["long_prompt"], 1)  # warm-up: the long prompt's buffers
        out["ttft_s"], _ = timed(run, req["long_prompt"], 1)
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
