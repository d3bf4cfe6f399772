"""Side-by-side benchmarks: fastdecode's kernels against the tools users
would otherwise pick, in one process, same inputs, same thread count,
interleaved. Used by ``bench/*.py`` and ``fastdecode bench``.

Each kernel module (softmax, ...) exposes ``cases(quick: bool) -> list[Case]``.
"""
