"""Writes the fixture logs of tests/test_transitions.py (run from the repository root:
`python tests/data/make_fixtures.py`). The correctness patterns are written out below; the tests
count them again from the files with their own small parsers."""

import csv
import json
from pathlib import Path

HERE = Path(__file__).parent
STAMP = "2025-01-01T10-00-00.000000"
# task -> (k (0 = free-form), before, after); counted by hand in the comments
PATTERNS = {
    # n_11 = 6, n_10 = 2, n_01 = 1, n_00 = 3
    "mc4": (4, [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0]),
    # n_11 = 5, n_10 = 1, n_01 = 2, n_00 = 2
    "mc2": (2, [1, 1, 1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 1, 1, 1, 0, 1, 0]),
    # n_11 = 3, n_10 = 2, n_01 = 1, n_00 = 4
    "free": (0, [1, 1, 1, 1, 0, 0, 0, 0, 0, 1], [1, 0, 0, 1, 0, 1, 0, 0, 0, 1]),
}
LM_EVAL_TASKS = {"mc4": "arc_easy", "mc2": "piqa", "free": "triviaqa"}
LIGHTEVAL_TASKS = {"mc4": "hellaswag", "mc2": "winogrande", "free": "gsm8k"}


def lm_eval_record(doc_id, k, correct, old_layout):
    if k:
        requests = [(f"Question {doc_id}?", f" choice {j}") for j in range(k)]
        resps = [[[-1.0 - j, j == 0]] for j in range(k)]
        metrics = {"acc": float(correct), "acc_norm": float(correct)}
    else:
        requests = [(f"Question {doc_id}?", {"until": ["\n"], "do_sample": False})]
        resps = [["an answer"]]
        metrics = {"exact_match": float(correct)}
    arguments = (
        [list(r) for r in requests]
        if old_layout
        else {f"gen_args_{j}": {"arg_0": a, "arg_1": b} for j, (a, b) in enumerate(requests)}
    )
    return {
        "doc_id": doc_id,
        "doc": {"question": f"Question {doc_id}?"},
        "target": 0 if k else "an answer",
        "arguments": arguments,
        "resps": resps,
        "filtered_resps": [r[0] for r in resps],
        "filter": "none" if k else "remove_whitespace",
        "metrics": list(metrics),
        **metrics,
        "doc_hash": f"d{doc_id}",
        "prompt_hash": f"p{doc_id}",
        "target_hash": f"t{doc_id}",
    }


def write_lm_eval():
    for side, index in (("before", 1), ("after", 2)):
        folder = HERE / "lm_eval" / side
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"results_{STAMP}.json").write_text(json.dumps({"results": {}}) + "\n")
        for key, task in LM_EVAL_TASKS.items():
            k, *answers = PATTERNS[key]
            lines = [json.dumps(lm_eval_record(i, k, c, side == "after")) for i, c in enumerate(answers[index - 1])]
            (folder / f"samples_{task}_{STAMP}.jsonl").write_text("\n".join(lines) + "\n")


def write_lighteval():
    import pyarrow as pa
    import pyarrow.parquet as pq

    for side, index in (("before", 1), ("after", 2)):
        folder = HERE / "lighteval" / side
        folder.mkdir(parents=True, exist_ok=True)
        for key, task in LIGHTEVAL_TASKS.items():
            k, *answers = PATTERNS[key]
            rows = [
                {
                    "example": f"Question {i}?",
                    "full_prompt": f"Answer the question.\nQuestion {i}?",
                    "predictions": ["A"],
                    "choices": [f" {c}" for c in "ABCD"[:k]] if k else [],
                    "gold_index": [0],
                    "metrics": {"extractive_match": float(c)},
                }
                for i, c in enumerate(answers[index - 1])
            ]
            pq.write_table(pa.Table.from_pylist(rows), folder / f"details_{task}_{STAMP}.parquet")


def write_plain():
    folder = HERE / "plain"
    folder.mkdir(parents=True, exist_ok=True)
    for side, index in (("before", 1), ("after", 2)):
        lines = []
        for task, (_, *answers) in PATTERNS.items():
            for i, c in enumerate(answers[index - 1]):
                lines.append(json.dumps({"id": f"{task}-{i}", "task": task, "correct": bool(c)}))
        (folder / f"{side}.jsonl").write_text("\n".join(lines) + "\n")
        # two seeds in one CSV with other column names; seed 1 flips the after answer of item 0
        with (folder / f"{side}_seeds.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["item", "benchmark", "score", "run"])
            for seed in (0, 1):
                for task, (_, *answers) in PATTERNS.items():
                    for i, c in enumerate(answers[index - 1]):
                        flip = seed == 1 and side == "after" and i == 0
                        writer.writerow([i, task, int(c) ^ flip, seed])
    (folder / "k_map.yaml").write_text("mc4: 4\nmc2: 2\nfree: 0\n")
    (folder / "categories.yaml").write_text("mc4: knowledge\nmc2: knowledge\nfree: math\n")
    # misaligned AFTER: mc4-11 missing, mc2-3 duplicated (two different answers)
    lines = (folder / "after.jsonl").read_text().splitlines()
    lines = [line for line in lines if '"mc4-11"' not in line]
    lines.append(json.dumps({"id": "mc2-3", "task": "mc2", "correct": True}))
    (folder / "after_misaligned.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write_lm_eval()
    write_lighteval()
    write_plain()
