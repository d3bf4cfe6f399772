"""Side-by-side benchmarks: fastdecode's kernels against the tools users
would otherwise pick, in one process, same inputs, same thread count,
interleaved. Used by ``bench/*.py`` and ``fastdecode bench``.

Each kernel module (softmax, ...) exposes ``cases(quick: bool) -> list[Case]``
and may expose ``notes(rows) -> list[str]``: lines printed after the table
(it may add figures to the rows' params, which then reach the JSON).
:mod:`.bandwidth` measures the machine's read bandwidth (``read_gbps``).
"""
