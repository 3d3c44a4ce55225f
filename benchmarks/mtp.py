"""MTP speculative decoding: decode tokens/s and acceptance per position, k = 0 (off), 1, 2, side by
side in one run on one checkpoint with an MTP module (default: the trained demo model).

For each batch size B (default 1 and 16) and each k, groups of B chat prompts (16 prompts in
all) go to one `LLMEngine` one group after the other (greedy, so every k emits the same tokens;
a check says so); in each group the steps until every request has its first token (the
prefills) are left out, and the decode steps are timed: output tokens per
second of wall clock and of this process's CPU time (single-threaded by default, so CPU time
stays comparable when other jobs load the machine). Rounds interleave the k's; each keeps its
best. Prints the speed-up over k = 0 and, for k > 0, the acceptance rate of each draft position
(verifications whose i-th draft was accepted / verifications) and the mean tokens per step.
  python benchmarks/mtp.py --model path/to/checkpoint --batch 1 16 --k 0 1 2 --repeats 3
"""

import argparse
import json
import time
from pathlib import Path

import torch

QUESTIONS = ["What is {a} + {b}?", "Compute {a} - {b}.", "What is {a} times {b}?", "Please add {a} and {b}.",
             "How much is {a} minus {b}?", "Multiply {a} by {b}."]  # fmt: skip


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", default=None, help="checkpoint dir with an MTP module (default: the demo model)"
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--k", type=int, nargs="+", default=[0, 1, 2], help="num_speculative_tokens (0: off)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument(
        "--ignore-eos", action="store_true", help="generate max-tokens tokens whatever the model says"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--prompts", type=int, default=16, help="prompts per batch size, run in groups of B")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    return p.parse_args()


def prompts(engine, n: int) -> list[list[int]]:
    """n chat prompts (the checkpoint's template), or random ids without a tokenizer."""
    tok = engine.tokenizer
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        a, b = torch.randint(10, 99, (2,), generator=g).tolist()
        if tok is None:
            out.append(torch.randint(0, engine.executor.vocab_size, (24,), generator=g).tolist())
            continue
        text = tok.apply_chat_template(
            [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)].format(a=a, b=b)}]
        )
        out.append(tok.encode(text, add_special_tokens=False))
    return out


def build(model: str, k: int, batch: int):
    from fathom.api.engine import EngineSettings
    from fathom.worker.factory import create_engine

    spec = {"speculative_config": {"method": "mtp", "num_speculative_tokens": k}} if k else {}
    settings = EngineSettings(model=model, dtype="float32", max_num_seqs=max(16, batch), engine_core_process=False,
                              **spec)  # fmt: skip
    return create_engine(settings)


def decode_run(engine, batch_prompts, params, tag: str):
    """(decode tokens, wall s, cpu s, token ids per request) of one run; prefills not timed."""
    for i, p in enumerate(batch_prompts):
        engine.add_request(f"{tag}-{i}", p, params)
    outs: dict[str, list[int]] = {}
    started = None
    decode_tokens = 0
    while engine.has_unfinished_requests():
        ready = started is None and all(r.seqs[0].num_output_tokens > 0 for r in engine.requests.values())
        if ready:
            started = (time.perf_counter(), time.process_time())
            before = sum(len(v) for v in outs.values())
        for out in engine.step():
            outs.setdefault(out.request_id, []).extend(out.outputs[0].token_ids if out.outputs else [])
    wall, cpu = time.perf_counter() - started[0], time.process_time() - started[1]
    decode_tokens = sum(len(v) for v in outs.values()) - before
    return decode_tokens, wall, cpu, [outs[f"{tag}-{i}"] for i in range(len(batch_prompts))]


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    from fathom.engine.sampling_params import SamplingParams

    model = args.model or str(
        Path(__file__).resolve().parents[1] / "platform/fathom/worker/demo_model/checkpoint"
    )
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=args.ignore_eos)
    results = {}
    for batch in args.batch:
        engines = {k: build(model, k, batch) for k in args.k}
        ps = prompts(engines[args.k[0]], max(batch, args.prompts))
        groups = [ps[i : i + batch] for i in range(0, len(ps), batch)]
        best: dict[int, tuple[float, float]] = {}
        tokens: dict[int, list] = {}
        for r in range(args.repeats):
            for k, engine in engines.items():
                runs = [decode_run(engine, g, params, f"b{batch}-r{r}-g{i}") for i, g in enumerate(groups)]
                n, wall, cpu = (sum(run[j] for run in runs) for j in range(3))
                prev = best.get(k, (0.0, 0.0))
                best[k] = (max(prev[0], n / wall), max(prev[1], n / cpu))
                tokens[k] = [ids for run in runs for ids in run[3]]
        same = all(tokens[k] == tokens[args.k[0]] for k in args.k)
        results[batch] = report(batch, engines, best, same, sum(map(len, ps)) // len(ps))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def report(batch, engines, best, same, prompt_len):
    base = best.get(0)
    print(f"\nbatch {batch} (prompts of ~{prompt_len} tokens; greedy outputs identical across k: {same})")
    print(
        "| k | decode tok/s (wall) | decode tok/s (CPU) | vs k=0 (wall) | vs k=0 (CPU) | acceptance per position | tokens/step |"
    )
    print("|---|---:|---:|---:|---:|---|---:|")
    rows = {}
    for k, (wall, cpu) in best.items():
        spec = engines[k].stats().spec_decode
        rates = [a / spec.num_drafts for a in spec.accepted_per_position] if spec and spec.num_drafts else []
        per_step = 1 + spec.num_accepted_tokens / spec.num_drafts if spec and spec.num_drafts else 1.0
        ratio = (f"{wall / base[0]:.2f}x", f"{cpu / base[1]:.2f}x") if base else ("", "")
        print(f"| {k} | {wall:.1f} | {cpu:.1f} | {ratio[0]} | {ratio[1]} | "
              f"{', '.join(f'{r:.2f}' for r in rates) or '-'} | {per_step:.2f} |")  # fmt: skip
        rows[k] = {"wall_tok_s": wall, "cpu_tok_s": cpu, "acceptance": rates, "tokens_per_step": per_step}
    return {"identical": same, "k": rows}


if __name__ == "__main__":
    main()
