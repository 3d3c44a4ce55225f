"""Structured-output overhead: decode throughput with a json_schema grammar vs without, side by
side in one run, on the same engine (the built-in demo model unless --model).

    python benchmarks/structured_overhead.py [--concurrency 32] [--max-tokens 128] [--rounds 3]

Each round runs `concurrency` requests at once twice: unconstrained, then constrained by a
JSON schema whose shortest valid output is longer than `max_tokens` (an array of at least 200
bounded objects), so both runs generate exactly concurrency x max_tokens tokens. Sampling is
random (temperature 1, seeded) in both. Prints tokens/s of each and their ratio per round and
the median (target: constrained >= 0.85 x unconstrained).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

import torch

from fathom import LLM, SamplingParams
from fathom.engine.sampling_params import StructuredSpec

SCHEMA = {"type": "array", "minItems": 200, "items": {
    "type": "object", "additionalProperties": False, "required": ["id", "name", "tags", "score"],
    "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 9999},
                   "name": {"type": "string", "maxLength": 12},
                   "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
                   "score": {"type": "number", "minimum": 0, "maximum": 1}}}}


def run(llm: LLM, n: int, max_tokens: int, structured: StructuredSpec | None) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second of this process)."""
    prompts = [f"Request {i}: list the records as JSON." for i in range(n)]
    params = [SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=i, structured=structured,
                             ignore_eos=structured is None) for i in range(n)]
    t0, c0 = time.perf_counter(), time.process_time()
    outs = llm.generate(prompts, params)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    assert tokens == n * max_tokens, (tokens, n * max_tokens)
    if structured is not None:  # every output is a prefix of the schema's JSON (cut at max_tokens)
        assert all(o.outputs[0].text.startswith('[{"id": ') for o in outs), outs[0].outputs[0].text[:40]
    return tokens / dt, tokens / dc


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    llm = LLM(a.model, max_num_seqs=a.concurrency, max_model_len=1024)
    spec = StructuredSpec("json_schema", json.dumps(SCHEMA))
    run(llm, 4, 8, None), run(llm, 4, 8, spec)  # warm-up (grammar compile is cached per schema)
    ratios, cpu_ratios = [], []
    print(f"{'round':>5} {'plain tok/s':>12} {'json_schema tok/s':>18} {'ratio':>6} {'CPU-time ratio':>15}")
    for r in range(a.rounds):
        plain, plain_cpu = run(llm, a.concurrency, a.max_tokens, None)
        constrained, constrained_cpu = run(llm, a.concurrency, a.max_tokens, spec)
        ratios.append(constrained / plain)
        cpu_ratios.append(constrained_cpu / plain_cpu)
        print(f"{r:>5} {plain:>12.1f} {constrained:>18.1f} {ratios[-1]:>6.3f} {cpu_ratios[-1]:>15.3f}")
    print(f"median ratio json_schema / unconstrained: wall {statistics.median(ratios):.3f}, "
          f"CPU time {statistics.median(cpu_ratios):.3f} (target >= 0.85)")
    llm.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
