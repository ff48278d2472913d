"""`forget-jax transitions` and forget_jax/evaluation on the fixture logs of tests/data
(written by tests/data/make_fixtures.py; docs/science/methods.md E).

Every expected count is computed here again from the raw files with a few lines of json / csv /
pyarrow (an independent reader), or written by hand; rates are checked against the counts by
their definitions (tolerance: float32 rounding of ratios of small integers).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from forget_jax import evaluation as ev
from forget_jax.cli import app

DATA = Path(__file__).parent / "data"
TOL = 1e-6
COLUMNS = (
    "task, k, n, acc_before, acc_after, n_00, n_01, n_10, n_11, forgetting, backward_transfer, "
    "chance, forgetting_true, backward_transfer_true, forgetting_max, backward_transfer_max"
).split(", ")


def pair_counts(before: dict, after: dict) -> dict[str, int]:
    """Independent count: n_ab over the ids both sides carry."""
    c = Counter(f"n_{int(before[i])}{int(after[i])}" for i in before if i in after)
    return {name: c.get(name, 0) for name in ("n_00", "n_01", "n_10", "n_11")}


def metrics_of(before_path, after_path, **options):
    before, after = ev.read_log(before_path, **options), ev.read_log(after_path, **options)
    aligned = ev.align(before, after)
    ks = ev.resolve_k(sorted({t for _, t in aligned.ids}), before, after)
    return ev.task_metrics(aligned, ks), ks


def check_counts(metrics, expected_counts):
    for task, counts in expected_counts.items():
        row = metrics[("0", task)]
        for name, value in counts.items():
            assert row[name] == value, (task, name)
        n = sum(counts.values())
        assert row["n"] == n
        assert abs(row["forgetting"] - counts["n_10"] / n) < TOL
        assert abs(row["backward_transfer"] - counts["n_01"] / n) < TOL
        assert abs(row["acc_before"] - (counts["n_10"] + counts["n_11"]) / n) < TOL


def test_lm_eval_round_trip():
    expected, choices = {}, {}
    for task in ("arc_easy", "piqa", "triviaqa"):
        sides = []
        for side in ("before", "after"):
            (file,) = (DATA / "lm_eval" / side).glob(f"samples_{task}_*.jsonl")
            records = [json.loads(line) for line in file.read_text().splitlines()]
            sides.append({r["doc_id"]: r.get("acc", r.get("exact_match")) for r in records})
            choices[task] = len(records[0]["arguments"])
        expected[task] = pair_counts(*sides)
    metrics, ks = metrics_of(DATA / "lm_eval/before", DATA / "lm_eval/after")
    check_counts(metrics, expected)
    # hand counts of arc_easy (make_fixtures.py): n_00 = 3, n_01 = 1, n_10 = 2, n_11 = 6
    assert expected["arc_easy"] == {"n_00": 3, "n_01": 1, "n_10": 2, "n_11": 6}
    # k from the records: 4 and 2 loglikelihood requests; the generative task has one -> free-form
    assert ks == {"arc_easy": 4, "piqa": 2, "triviaqa": 0} and choices["triviaqa"] == 1
    a, b = 8 / 12, 7 / 12
    assert abs(metrics[("0", "arc_easy")]["chance"] - (1 - a) * (1 - b) / 3) < TOL


def test_lighteval_round_trip():
    pq = pytest.importorskip("pyarrow.parquet")
    expected = {}
    for task in ("hellaswag", "winogrande", "gsm8k"):
        sides = []
        for side in ("before", "after"):
            (file,) = (DATA / "lighteval" / side).glob(f"details_{task}_*.parquet")
            table = pq.read_table(file).to_pydict()
            sides.append({p: round(m["extractive_match"]) for p, m in zip(table["full_prompt"], table["metrics"])})
        expected[task] = pair_counts(*sides)
    metrics, ks = metrics_of(DATA / "lighteval/before", DATA / "lighteval/after")
    check_counts(metrics, expected)
    assert ks == {"hellaswag": 4, "winogrande": 2, "gsm8k": 0}


def test_plain_jsonl_round_trip():
    sides = []
    for side in ("before", "after"):
        records = [json.loads(line) for line in (DATA / f"plain/{side}.jsonl").read_text().splitlines()]
        sides.append({(r["task"], r["id"]): r["correct"] for r in records})
    expected = {}
    for task in ("mc4", "mc2", "free"):
        expected[task] = pair_counts(*({i: c for (t, i), c in s.items() if t == task} for s in sides))
    metrics, ks = metrics_of(DATA / "plain/before.jsonl", DATA / "plain/after.jsonl")
    check_counts(metrics, expected)
    assert set(ks.values()) == {0}  # plain logs carry no k: free-form unless --k / --k-map


def test_csv_seeds_mean_and_std_over_seeds():
    per_seed = {}
    for side in ("before", "after"):
        with (DATA / f"plain/{side}_seeds.csv").open() as handle:
            for row in csv.DictReader(handle):
                per_seed.setdefault((row["run"], row["benchmark"]), [{}, {}])[side == "after"][row["item"]] = int(
                    row["score"]
                )
    options = dict(id_field="item", task_field="benchmark", correct_field="score", seed_field="run")
    before = ev.read_log(DATA / "plain/before_seeds.csv", **options)
    after = ev.read_log(DATA / "plain/after_seeds.csv", **options)
    aligned = ev.align(before, after)
    ks = ev.resolve_k(["free", "mc2", "mc4"], before, after, k_map=ev.load_mapping(DATA / "plain/k_map.yaml", "k"))
    rows = {r["task"]: r for r in ev.summarize(ev.task_metrics(aligned, ks), ks)}
    for task in ("mc4", "mc2", "free"):
        f = np.array([pair_counts(*per_seed[(s, task)])["n_10"] / len(per_seed[(s, task)][0]) for s in "01"])
        assert abs(rows[task]["forgetting"] - f.mean()) < TOL
        assert abs(rows[task]["forgetting_std"] - f.std(ddof=1)) < TOL
        assert rows[task]["seeds"] == 2
    assert rows["mc4"]["k"] == 4 and rows["free"]["k"] is None


def test_seed_consistent_counts_by_hand():
    # 3 seeds x 4 items, labels (2 before + after): item 0 always 10; item 1 10, 10, 11;
    # item 2 01, 00, 01; item 3 always 11
    before = np.array([[1, 1, 0, 1], [1, 1, 0, 1], [1, 1, 0, 1]])
    after = np.array([[0, 0, 1, 1], [0, 0, 0, 1], [0, 1, 1, 1]])
    two = ev.seed_consistent_counts(before, after, 2)
    # pairs (0,1): items 0, 1, 3 agree -> 10, 10, 11; (0,2): 0, 2, 3 -> 10, 01, 11; (1,2): 0, 3 -> 10, 11
    assert two["combinations"] == 3
    assert (two["n_10"], two["n_01"], two["n_11"], two["n_00"]) == (4 / 3, 1 / 3, 1.0, 0.0)
    three = ev.seed_consistent_counts(before, after, 3)
    assert (three["n_10"], three["n_01"], three["n_11"], three["n_00"]) == (1.0, 0.0, 1.0, 0.0)


def test_misaligned_ids_are_reported_and_strict_is_an_error():
    before = ev.read_log(DATA / "plain/before.jsonl")
    after = ev.read_log(DATA / "plain/after_misaligned.jsonl")
    aligned = ev.align(before, after)
    assert "task 'mc4': 1 id only in BEFORE (mc4-11)" in aligned.problems
    assert "task 'mc2': 1 id duplicated in AFTER (mc2-3)" in aligned.problems
    assert aligned.dropped == {("0", "mc4"): 1, ("0", "mc2"): 1, ("0", "free"): 0}
    assert len(aligned.ids[("0", "mc4")]) == 11 and len(aligned.ids[("0", "mc2")]) == 9
    with pytest.raises(ev.LogError, match=r"after_misaligned.jsonl: task 'mc\d': .*--strict"):
        ev.align(before, after, strict=True)


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": 1, "task": "a", "correct": 1}\n{"id": 2, "task": "a"}\n', r"x.jsonl:2: field 'correct' missing"),
        ('{"id": 1, "task": "a", "correct": 2}\n', r"x.jsonl:1: field 'correct': value 2 is not 0/1"),
        ('{"id": 1, "task": "a", "correct": 0.5}\n', r"x.jsonl:1: field 'correct': value 0.5 is not 0/1"),
        ('{"id": 1, "task": "a", "correct": "maybe"}\n', r"x.jsonl:1: field 'correct': value 'maybe' is not 0/1"),
        ('{"id": 1, "task": "a", "correct": 1}\n{"id": 2,\n', r"x.jsonl:2: not valid JSON"),
        (b"\xff\xfe\x00", r"x.jsonl: unreadable file"),
    ],
)
def test_bad_plain_input_is_one_line(tmp_path, content, message):
    with pytest.raises(ev.LogError, match=message) as info:
        ev.read_log(write(tmp_path / "x.jsonl", content))
    assert "\n" not in str(info.value)


def test_bad_lm_eval_and_lighteval_input(tmp_path, monkeypatch):
    record = json.loads(
        (DATA / "lm_eval/before/samples_piqa_2025-01-01T10-00-00.000000.jsonl").read_text().split("\n")[0]
    )
    del record["acc"]
    file = write(tmp_path / "samples_piqa_2025-01-01T10-00-00.jsonl", json.dumps(record) + "\n")
    with pytest.raises(ev.LogError, match=r"samples_piqa_2025-01-01T10-00-00.jsonl:1: field 'acc' missing"):
        ev.read_log(file)
    two_filters = [dict(record, acc=1.0, filter=f) for f in ("strict", "flexible")]
    file = write(tmp_path / "samples_piqa_2025-01-01T10-00-00.jsonl", "\n".join(map(json.dumps, two_filters)))
    with pytest.raises(ev.LogError, match=r"several lm-eval filters \(flexible, strict\): pick one with --metric"):
        ev.read_log(file)
    assert ev.read_log(file, metric="acc,strict").items[("0", "piqa")] == {"0": True}
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    with pytest.raises(ev.LogError, match=r"needs pyarrow: pip install 'forget-jax\[lighteval\]'"):
        ev.read_log(DATA / "lighteval/before")


def test_bad_k_and_task_on_one_side(tmp_path):
    before, after = ev.read_log(DATA / "plain/before.jsonl"), ev.read_log(DATA / "plain/after.jsonl")
    with pytest.raises(ev.LogError, match=r"--k: k = 1 \(needs 0 for free-form or k >= 2"):
        ev.resolve_k(["mc4"], before, after, k=1)
    with pytest.raises(ev.LogError, match=r"map.yaml: task 'mc2': k = 1"):
        ev.resolve_k(["mc2"], before, after, k_map={"mc2": 1}, k_map_path="map.yaml")
    extra = write(
        tmp_path / "after.jsonl", (DATA / "plain/after.jsonl").read_text() + '{"id": 0, "task": "new", "correct": 1}\n'
    )
    with pytest.raises(ev.LogError, match=r"after.jsonl: task 'new' is in AFTER but not in BEFORE"):
        ev.align(before, ev.read_log(extra))


def run_cli(*args):
    return CliRunner().invoke(app, ["transitions", *map(str, args)])


def test_cli_end_to_end_csv_json_plot(tmp_path):
    out, plot = tmp_path / "t.csv", tmp_path / "t.png"
    result = run_cli(DATA / "lm_eval/before", DATA / "lm_eval/after", "--out", out, "--plot", plot)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split() == COLUMNS
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == COLUMNS  # exactly these columns, in order, for one seed
    assert [r["task"] for r in rows] == ["arc_easy", "piqa", "triviaqa", "OVERALL"]
    assert [r["k"] for r in rows] == ["4", "2", "", ""]  # k empty for free-form
    tasks, overall = rows[:-1], rows[-1]
    for column in ("forgetting_true", "backward_transfer_true", "acc_before", "chance"):  # unweighted task mean
        assert abs(float(overall[column]) - np.mean([float(r[column]) for r in tasks])) < TOL
    assert float(overall["n"]) == 32 and float(overall["n_10"]) == 2 + 1 + 2  # totals
    assert plot.stat().st_size > 0
    result = run_cli(DATA / "lm_eval/before", DATA / "lm_eval/after", "--out", tmp_path / "t.json")
    data = json.loads((tmp_path / "t.json").read_text())
    assert list(data[0]) == COLUMNS and data[2]["k"] is None


def test_cli_categories_strict_and_errors(tmp_path):
    base = (DATA / "plain/before.jsonl", DATA / "plain/after.jsonl", "--k-map", DATA / "plain/k_map.yaml")
    result = run_cli(*base, "--category-map", DATA / "plain/categories.yaml", "--out", tmp_path / "c.csv")
    assert result.exit_code == 0, result.output
    rows = {r["task"]: r for r in csv.DictReader(io.StringIO((tmp_path / "c.csv").read_text()))}
    knowledge = np.mean([float(rows[t]["forgetting_true"]) for t in ("mc4", "mc2")])
    assert abs(float(rows["category:knowledge"]["forgetting_true"]) - knowledge) < TOL
    # OVERALL with categories: the mean over categories (the published code)
    overall = np.mean([knowledge, float(rows["free"]["forgetting_true"])])
    assert abs(float(rows["OVERALL"]["forgetting_true"]) - overall) < TOL
    misaligned = (DATA / "plain/before.jsonl", DATA / "plain/after_misaligned.jsonl")
    result = run_cli(*misaligned)
    assert result.exit_code == 0 and "1 id only in BEFORE (mc4-11)" in result.output
    result = run_cli(*misaligned, "--strict")
    assert result.exit_code == 2 and result.output.count("\n") == 1 and result.output.startswith("error: ")
    for args, message in (
        ((DATA / "plain/before.jsonl",), "expected BEFORE AFTER pairs"),
        ((*base[:2], "--k", "1"), "k = 1"),
        ((*base[:2], "--out", tmp_path / "t.txt"), "expected a .csv or .json"),
        ((tmp_path / "missing.jsonl", base[1]), "missing.jsonl: no such file"),
    ):
        result = run_cli(*args)
        assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output
