"""The benchmarks' repeated runs: contenders take turns in alternating order, and the median run is reported."""

from __future__ import annotations

from benchmarks.harness import median_runs


def test_contenders_alternate_and_the_median_run_of_each_is_reported():
    calls: list[str] = []
    figures = {"a": iter([3.0, 1.0, 2.0]), "b": iter([5.0, 4.0, 6.0])}

    def contender(name: str):
        def run() -> dict[str, object]:
            calls.append(name)
            return {"name": name, "tokens_per_s": next(figures[name])}

        return run

    runs = median_runs([contender("a"), contender("b")], repeats=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert runs == [
        {"name": "a", "tokens_per_s": 2.0, "tokens_per_s_each": [3.0, 1.0, 2.0]},
        {"name": "b", "tokens_per_s": 5.0, "tokens_per_s_each": [5.0, 4.0, 6.0]},
    ]


def test_with_an_even_count_the_lower_middle_run_is_reported():
    figures = iter([7.0, 5.0])
    [run] = median_runs([lambda: {"pairs_per_s": next(figures)}], repeats=2, key="pairs_per_s")
    assert run == {"pairs_per_s": 5.0, "pairs_per_s_each": [7.0, 5.0]}
