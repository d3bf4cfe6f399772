"""The NumPy backend runs the readable definitions in fastdecode.reference:
wrapping one of them changes what the backend computes."""
import inspect

import numpy as np
import pytest

import fastdecode as fd
from fastdecode import _sampling_args
from fastdecode.reference import attention, linear, norm, sampling, softmax


def test_sample_params_name_the_reference_sampler_arguments():
    """SAMPLE_PARAMS (the one layout) binds by name to reference.sampling.sample's arguments."""
    args = list(inspect.signature(sampling.sample).parameters)
    assert set(_sampling_args.SAMPLE_PARAMS) <= set(args[1:])
    assert len(set(_sampling_args.SAMPLE_PARAMS)) == len(_sampling_args.SAMPLE_PARAMS)


CASES = {
    "sample": (sampling, "sample", lambda x: fd.sample(x, top_k=5, rng=0)),
    "process": (sampling, "process", lambda x: fd.process_logits(x, top_p=0.5)),
    "linear": (linear, "linear", lambda x: fd.linear(x, np.eye(x.shape[1], dtype=x.dtype))),
    "softmax": (softmax, "softmax", lambda x: fd.softmax(x)),
    "attention": (attention, "attention", lambda x: fd.attention(*[x.reshape(1, 2, 2, -1)] * 3)),
    "rms_norm": (norm, "rms_norm", lambda x: fd.rms_norm(x)),
    "layer_norm": (norm, "layer_norm", lambda x: fd.layer_norm(x)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_numpy_backend_runs_the_reference(monkeypatch, name):
    module, attr, call = CASES[name]
    real = getattr(module, attr)
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, attr, spy)
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    with fd.use_backend("numpy"):
        call(x)
    assert calls, f"the NumPy backend did not call reference.{module.__name__.rsplit('.', 1)[1]}.{attr}"


def test_reference_sample_reports_bad_rows_as_codes():
    x = np.array([0.0, np.nan], np.float32)
    assert sampling.sample(x, u=0.5) == -1
    assert sampling.sample(np.array([0.0, np.inf], np.float32), u=0.5) == -2
    assert sampling.sample(np.full(3, -np.inf, np.float32), u=0.5) == -3
    assert sampling.sample(np.array([0.0, 5.0, 0.0], np.float32), temperature=0.0) == 1
