"""bench/less_work.py's pieces on the embedded model (the timings themselves are the benchmark's)."""
import fastdecode
from fastdecode.benchmarks import less_work


def test_lookup_case_copies_and_matches_plain_greedy():
    model = fastdecode.load("default", prefix_cache_mb=0)
    for copying in (True, False):
        # lookup_case raises if the outputs differ or the forced model misses its target
        tokens_per_s, note = less_work.lookup_case(model, 1, copying)
        assert set(tokens_per_s) == {f"lookup k={less_work.K}", "plain greedy"}
        accepted, drafted = map(int, note.split()[0].split("/"))
        if copying:  # most tokens come from the drafts
            assert accepted > less_work.COPY_TOKENS // 2
        else:  # drafts are proposed on common n-grams, and most fail
            assert accepted < drafted // 2


def test_summary_and_table():
    row = less_work.summary("copying", {"a": [4.0, 6.0], "b": [2.0, 2.0]}, ("a", "b"), 2.0, higher_better=True)
    assert row["ratio"] == 2.5 and row["ratio_range"] == [2.0, 3.0] and row["met"]
    text = less_work.table([dict(model="m", threads=2, backend="c", note="", **row)])
    assert "| m | copying | a: 5.0 tok/s, b: 2.0 tok/s | 2.500 [2.000, 3.000] | ≥ 2.0 | yes |" in text
