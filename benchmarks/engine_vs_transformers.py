"""Fathom's engine vs Hugging Face transformers on the same checkpoint, side by side in one run.

N concurrent requests (default 32 prompts of 64-256 random tokens, 128 greedy output tokens each):
  * fathom       - all requests submitted at once to `LLMEngine` (continuous batching, paged latent KV)
  * hf-sequential - `generate()` one request at a time (measured on --sequential-sample requests;
                    its throughput does not depend on how many are queued behind it)
  * hf-padded    - `generate()` on the whole left-padded batch
  * hf-cb        - transformers' own continuous batching (`generate_batch`), when installed
Prints output tokens/s of each and Fathom's ratio to each, by wall clock and by CPU time of this
process (all contenders run single-threaded in this process by default, so CPU time is the
figure that stays comparable when other jobs load the machine). Example (small):
  python benchmarks/engine_vs_transformers.py --num-prompts 8 --output-len 32
"""

import argparse
import time

import torch


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint dir (default: the built-in demo model)")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--min-len", type=int, default=64)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--sequential-sample", type=int, default=4, help="requests timed one at a time")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for every contender")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--skip", nargs="*", default=[], choices=["hf-sequential", "hf-padded", "hf-cb"])
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of every contender, interleaved; each reports its best round (damps load noise)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def make_prompts(n, lo, hi, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lens]


def run_fathom(model_dir, prompts, out_len, args):
    from fathom.api.engine import EngineSettings
    from fathom.engine.sampling_params import SamplingParams
    from fathom.worker.factory import create_engine

    settings = EngineSettings(model=str(model_dir), dtype="float32", max_num_seqs=max(64, len(prompts)),
                              max_num_batched_tokens=args.max_num_batched_tokens)
    engine = create_engine(settings)
    params = SamplingParams(temperature=0, max_tokens=out_len, ignore_eos=True)
    engine.add_request("warmup", prompts[0][:16], SamplingParams(temperature=0, max_tokens=4))
    while engine.has_unfinished_requests():
        engine.step()
    engine.blocks.reset_prefix_cache()
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, params)
    tokens: dict[str, list[int]] = {}
    steps = 0
    while engine.has_unfinished_requests():
        steps += 1
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.outputs[0].token_ids if out.outputs else [])
    dt = time.perf_counter() - t0
    return dt, [tokens[str(i)] for i in range(len(prompts))], steps


@torch.inference_mode()
def run_hf_sequential(hf, prompts, out_len):
    hf.generate(torch.tensor([prompts[0][:8]]), max_new_tokens=2, do_sample=False)  # warm-up, untimed
    outs, t0 = [], time.perf_counter()
    for p in prompts:
        ids = torch.tensor([p])
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=out_len,
                          min_new_tokens=out_len, do_sample=False)
        outs.append(out[0, len(p):].tolist())
    return time.perf_counter() - t0, outs


@torch.inference_mode()
def run_hf_padded(hf, prompts, out_len, pad_id=0):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    t0 = time.perf_counter()
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=out_len, min_new_tokens=out_len,
                      do_sample=False, pad_token_id=pad_id)
    return time.perf_counter() - t0, out[:, width:].tolist()


@torch.no_grad()  # generate_batch updates its tensors in place from a worker thread
def run_hf_cb(hf, prompts, out_len):
    import logging

    from transformers import GenerationConfig

    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.CRITICAL)  # we report failures ourselves
    cfg = GenerationConfig(max_new_tokens=out_len, min_new_tokens=out_len, do_sample=False, eos_token_id=-1,
                           pad_token_id=0)
    t0 = time.perf_counter()
    res = hf.generate_batch(inputs=prompts, generation_config=cfg, progress_bar=False)
    dt = time.perf_counter() - t0
    tokens = [list(r.generated_tokens) for r in res.values()]
    if sum(map(len, tokens)) < len(prompts) * out_len:
        raise RuntimeError(f"generate_batch produced {sum(map(len, tokens))} of {len(prompts) * out_len} tokens")
    return dt, tokens


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


def agreement(a, b):
    """Fraction of requests whose tokens agree exactly."""
    return sum(x == y for x, y in zip(a, b)) / max(1, len(a))


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    if args.model is None:
        from fathom.worker.demo import demo_checkpoint_dir

        model_dir = demo_checkpoint_dir()
    else:
        model_dir = args.model
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    cfg = hf.config
    print(f"checkpoint {model_dir}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
          f"{cfg.n_routed_experts} routed experts (top-{cfg.num_experts_per_tok}), vocab {cfg.vocab_size}; "
          f"threads={args.threads}")
    prompts = make_prompts(args.num_prompts, args.min_len, args.max_len, cfg.vocab_size, args.seed)
    n_out = args.num_prompts * args.output_len
    print(f"{args.num_prompts} requests, prompts {args.min_len}-{args.max_len} tokens, "
          f"{args.output_len} output tokens each ({n_out} total)\n")

    contenders = {"fathom": lambda: run_fathom(model_dir, prompts, args.output_len, args)[:2]}
    k = min(args.sequential_sample, len(prompts))
    if "hf-sequential" not in args.skip:
        contenders["hf-sequential"] = lambda: run_hf_sequential(hf, prompts[:k], args.output_len)
    if "hf-padded" not in args.skip:
        contenders["hf-padded"] = lambda: run_hf_padded(hf, prompts, args.output_len)
    if "hf-cb" not in args.skip and hasattr(hf, "generate_batch"):
        contenders["hf-cb"] = lambda: run_hf_cb(hf, prompts, args.output_len)
    made = {"hf-sequential": k * args.output_len}
    wall, cpu, tokens, failed = {}, {}, {}, set()
    for r in range(args.repeats):
        for name, run in contenders.items():
            if name in failed:
                continue
            c0 = time.process_time()
            try:
                dt, toks = run()
            except Exception as e:  # noqa: BLE001 - report it, keep the other figures
                print(f"{name:14s} failed: {type(e).__name__}: {_first_line(e)}")
                failed.add(name)
                continue
            ct = time.process_time() - c0
            made_n = made.get(name, n_out)
            tokens.setdefault(name, toks)
            print(f"round {r + 1}: {name:14s} {made_n / dt:8.1f} tok/s wall ({dt:.1f}s), "
                  f"{made_n / ct:8.1f} tok/s of CPU time ({ct:.1f}s)")
            wall[name] = max(wall.get(name, 0.0), made_n / dt)
            cpu[name] = max(cpu.get(name, 0.0), made_n / ct)
    print(f"\n{'best of ' + str(args.repeats):14s} {'wall tok/s':>11s} {'CPU tok/s':>11s}")
    for name, w in wall.items():
        print(f"{name:14s} {w:11.1f} {cpu[name]:11.1f}")
    if "hf-sequential" in tokens and "fathom" in tokens:
        print(f"greedy agreement fathom vs hf-sequential on {k} requests: "
              f"{agreement(tokens['hf-sequential'], tokens['fathom'][:k]):.0%}")
    print()
    for name, w in wall.items():
        if name != "fathom" and "fathom" in wall:
            print(f"fathom / {name:14s} = {wall['fathom'] / w:6.2f}x wall, "
                  f"{cpu['fathom'] / cpu[name]:6.2f}x CPU time")

if __name__ == "__main__":
    main()
