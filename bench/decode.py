"""Decoding throughput: flaxzoo (JAX) against transformers' PyTorch `generate`.

Run from the repository root:

    .venv/bin/python bench/decode.py                 # the full table (a few minutes)
    .venv/bin/python bench/decode.py --repeats 3 --new-tokens 32 --only greedy-b1

One random-weight GPT-2-shaped model (6 layers, width 384, 6 heads, vocabulary 8192,
n_positions 256) is built with transformers (`GPT2LMHeadModel`), saved, and loaded into
flaxzoo with `models.convert.load_hf_gpt2`, so both libraries run the same weights.
Each configuration feeds a 32-token prompt and generates exactly `--new-tokens` tokens
(no EOS: flaxzoo's configs have `eos_id=None`, transformers gets `eos_token_id=None`, so
neither stops early). Tokens per second count new tokens x batch; for beam search, new
tokens x batch (not x beams), the tokens a user gets back.

flaxzoo is timed through its public API, `train.generate.generate_gpt(model, ...)`
(one jit-compiled program per configuration; `nnx.split` of the model happens on every
call), after warm-up calls. Two compile figures per configuration: "compile s" is
jax's ahead-of-time `trace(...).lower().compile()` of that program, and "first call s"
is what a user waits for on the first call after `jax.clear_caches()`, minus the
median steady-state call. PyTorch runs `model.generate` under `torch.inference_mode()`
with `torch.set_num_threads(--threads)` (2 by default, the machine's cores), after one
warm-up call. The two libraries alternate within each repeat, with a short pause
before each timed call, so load from other processes hits both alike; the figures are
medians over `--repeats`. "greedy equal" is the share of greedy tokens on which the
two agree (same weights, so it should be 100%).

"ms/token" is a call's time over its new tokens (the prefill of the 32-token prompt
included, 2-5% of the call). The memory-bandwidth floor is the time to read every
weight matrix a decode step multiplies with once (`WeightRead`): chained, one
vector-matrix product feeding the next as in a forward pass, and independent, all
products side by side on every core. The chained read is timed again after every
repeat, and "/ read" is ms/token over the median of that configuration's own samples
(so drifting load cancels): how close a step comes to costing nothing but one read of
the weights (batch-8 and beam steps also read the weights once, for 8 or 4 rows).

`--profile` also traces one flaxzoo call per configuration with `jax.profiler` and
prints the XLA operations that take the most time per decode step (thread time, so
the sum can exceed wall time on 2 cores): the quickest way to see where a step goes.

Never part of the test run (pytest collects tests/ only).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

MODEL = dict(vocab_size=8192, n_positions=256, n_embd=384, n_layer=6, n_head=6)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed calls per configuration and library (median reported)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--only", nargs="*", default=None,
                        help="configuration names to run (default: all); see --list")
    parser.add_argument("--list", action="store_true", help="list configuration names")
    parser.add_argument("--pause", type=float, default=0.2,
                        help="seconds to sleep before each timed call (default 0.2)")
    parser.add_argument("--profile", action="store_true",
                        help="also print a per-operation profile of each flaxzoo call")
    parser.add_argument("--skip-torch", action="store_true",
                        help="time flaxzoo only (no PyTorch column)")
    return parser.parse_args(argv)


# name, strategy, batch, beams
CASES = [
    ("greedy-b1", "greedy", 1, 1),
    ("greedy-b8", "greedy", 8, 1),
    ("topk50-b1", "top_k", 1, 1),
    ("topk50-b8", "top_k", 8, 1),
    ("beam4-b1", "beam", 1, 4),
]


def build_models(tmp):
    import torch
    import transformers

    from flaxzoo.models.convert import load_hf_gpt2

    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(**MODEL, bos_token_id=None, eos_token_id=None,
                                        pad_token_id=0)
    hf_model = transformers.GPT2LMHeadModel(hf_config).eval()
    hf_model.save_pretrained(tmp)
    _, model = load_hf_gpt2(tmp)
    return hf_model, model


def flax_config(strategy, new_tokens, beams):
    from flaxzoo.decoding import BeamSearchConfig, SamplingConfig

    if strategy == "greedy":
        return SamplingConfig(max_new_tokens=new_tokens, temperature=0.0, eos_id=None)
    if strategy == "top_k":
        return SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, top_k=50,
                              eos_id=None)
    return BeamSearchConfig(max_new_tokens=new_tokens, beam_size=beams, eos_id=None)


def torch_kwargs(strategy, new_tokens, beams):
    common = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                  pad_token_id=0, use_cache=True)
    if strategy == "greedy":
        return dict(common, do_sample=False, num_beams=1)
    if strategy == "top_k":
        return dict(common, do_sample=True, top_k=50, top_p=1.0, temperature=1.0, num_beams=1)
    return dict(common, do_sample=False, num_beams=beams, num_return_sequences=1,
                length_penalty=1.0, early_stopping=False)


def make_flax_call(model, strategy, prompt_np, config):
    from flaxzoo.train.generate import generate_gpt

    prompt = jnp.asarray(prompt_np)
    counter = [0]

    def call():
        rng = None
        if strategy == "top_k":
            counter[0] += 1
            rng = jax.random.key(counter[0])
        out = generate_gpt(model, prompt, config, rng=rng)
        jax.block_until_ready(out)
        return out

    return call


def aot_compile_time(model, strategy, prompt_np, config):
    """Seconds to trace, lower and compile flaxzoo's generate program ahead of time
    (`jit(...).trace(...).lower().compile()`), for the arguments `generate_gpt` passes."""
    from flax import nnx

    from flaxzoo.train.generate import _generate_gpt

    graphdef, params = nnx.split(model)
    rng = jax.random.key(0) if strategy == "top_k" else None
    start = time.perf_counter()
    _generate_gpt.trace(graphdef, params, jnp.asarray(prompt_np), None, rng,
                        config=config).lower().compile()
    return time.perf_counter() - start


def make_torch_call(hf_model, prompt_np, kwargs):
    import torch

    ids = torch.tensor(prompt_np, dtype=torch.long)
    mask = torch.ones_like(ids)

    def call():
        with torch.inference_mode():
            out = hf_model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        return out

    return call


PAUSE_S = 0.0


def load_average() -> str:
    """The machine's load averages, or "?" where /proc/loadavg is missing."""
    try:
        with open("/proc/loadavg") as f:
            return ", ".join(f.read().split()[:3])
    except OSError:
        return "?"


def timed(fn):
    time.sleep(PAUSE_S)  # lets the other library's worker threads go idle first
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def profile_call(call, steps: int, top: int = 12) -> list[str]:
    """Traces one call with `jax.profiler` and lists the XLA operations (numbered
    instances of one kind merged, e.g. `transpose_copy_fusion.3`) that take the most
    thread time, per decode step."""
    import collections
    import glob
    import re

    directory = tempfile.mkdtemp(prefix="flaxzoo-bench-trace-")
    with jax.profiler.trace(directory):
        call()
    path = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)
    total_ns, count = collections.Counter(), collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:  # XLA:CPU's worker threads
                continue
            for event in line.events:
                if event.name.startswith(("ThunkExecutor", "end: ")):
                    continue
                kind = re.sub(r"\.\d+$", "", event.name)
                total_ns[kind] += event.duration_ns
                count[kind] += 1
    lines = ["| operation | us / step | calls / step |", "|---|---:|---:|"]
    for kind, ns in total_ns.most_common(top):
        lines.append(f"| {kind} | {ns / 1e3 / steps:.0f} | {count[kind] / steps:.1f} |")
    return lines


class WeightRead:
    """The time to read every weight matrix a decode step multiplies with, once.

    One vector goes through each matrix: the block kernels ([in, out]) and the tied
    output projection (the token embedding, [V, D]); the position table is left out
    (a step reads one row of it). Two forms, each run `passes` times in one compiled
    `fori_loop` (no dispatch cost per pass):
      chained: each product feeds the next, as in a forward pass, so one matvec runs
        at a time (the floor for a batch-1 decode step);
      independent: every product from the same vector, so XLA runs them side by
        side on all cores (the machine's bandwidth).
    The programs are compiled ahead of time, so `jax.clear_caches()` leaves them be.
    """

    def __init__(self, model, passes: int = 10):
        from flax import nnx

        params = nnx.state(model, nnx.Param)
        self.param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
        self.matrices = [x for path, x in jax.tree_util.tree_leaves_with_path(params)
                         if x.ndim == 2 and "position_embed" not in jax.tree_util.keystr(path)]
        self.matrix_bytes = sum(w.size * w.dtype.itemsize for w in self.matrices)
        self.passes = passes
        vocab = model.config.vocab_size
        width = max(max(w.shape) for w in self.matrices if w.shape[0] != vocab)

        def product(w, x):
            # [V, D] embedding as the output projection: E @ x; a kernel [in, out]: x @ W.
            return w @ x[: w.shape[1]] if w.shape[0] == vocab else x[: w.shape[0]] @ w

        def chained(mats, c):
            x = jnp.full((width,), 0.5, jnp.float32) + c
            for w in mats:
                y = jnp.tanh(product(w, x))  # bounded, so no overflow or denormals
                x = jnp.concatenate([y, x[y.shape[0]:]]) if y.shape[0] < width else y[:width]
            return c + 1e-9 * x[0]

        def independent(mats, c):
            x = jnp.full((width,), 0.5, jnp.float32) + c
            return c + 1e-9 * sum(product(w, x).sum() for w in mats)

        def compiled(fn):
            loop = lambda mats: jax.lax.fori_loop(0, passes, lambda i, c: fn(mats, c),
                                                  jnp.zeros((), jnp.float32))
            program = jax.jit(loop).lower(self.matrices).compile()
            jax.block_until_ready(program(self.matrices))
            return program

        self._chained, self._independent = compiled(chained), compiled(independent)

    def chained(self) -> float:
        """Seconds per chained pass, from one timed run."""
        return timed(lambda: jax.block_until_ready(self._chained(self.matrices)))[0] / self.passes

    def independent(self) -> float:
        """Seconds per independent pass, from one timed run."""
        return timed(lambda: jax.block_until_ready(
            self._independent(self.matrices)))[0] / self.passes


def main(argv=None):
    global PAUSE_S
    args = parse_args(argv)
    PAUSE_S = args.pause
    if args.list:
        print("\n".join(name for name, *_ in CASES))
        return
    cases = [c for c in CASES if args.only is None or c[0] in args.only]
    if not cases:
        sys.exit(f"--only matched no configuration; choose from {[c[0] for c in CASES]}")

    import flax
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        hf_model, model = build_models(tmp)

    print("## Decoding throughput: flaxzoo vs transformers (PyTorch)\n")
    print(f"- machine: {platform.machine()} {platform.processor() or ''}".rstrip()
          + f", {os.cpu_count()} CPUs; python {platform.python_version()}")
    print(f"- jax {jax.__version__} (backend {jax.default_backend()}), flax {flax.__version__}, "
          f"torch {torch.__version__} (set_num_threads({args.threads})), "
          f"transformers {transformers.__version__}")
    print(f"- load average (1, 5, 15 min) at the start: {load_average()}")
    print(f"- model: random GPT-2 shape {MODEL}, float32; prompt {args.prompt_len} tokens, "
          f"{args.new_tokens} new tokens, no EOS; median of {args.repeats} repeats")

    reader = WeightRead(model)
    read_s = statistics.median(reader.chained() for _ in range(max(args.repeats, 5)))
    read_indep_s = statistics.median(reader.independent() for _ in range(max(args.repeats, 5)))
    mb = reader.matrix_bytes
    print(f"- weight read (memory-bandwidth floor): the {mb / 1e6:.1f} MB of weight "
          f"matrices a step multiplies with ({reader.param_bytes / 1e6:.1f} MB of parameters "
          f"in all), one vector through each: chained as in a forward pass "
          f"{read_s * 1e3:.2f} ms ({mb / read_s / 1e9:.1f} GB/s, at most {1 / read_s:.0f} "
          f"tokens/s at batch 1); all at once on every core {read_indep_s * 1e3:.2f} ms "
          f"({mb / read_indep_s / 1e9:.1f} GB/s). Measured again in every repeat: "
          f"\"/ read\" divides by the median of each configuration's own samples.\n")

    rng = np.random.default_rng(0)
    rows, profiles, warnings_ = [], [], []
    for name, strategy, batch, beams in cases:
        prompt_np = rng.integers(1, MODEL["vocab_size"], size=(batch, args.prompt_len))
        config = flax_config(strategy, args.new_tokens, beams)
        fx_call = make_flax_call(model, strategy, prompt_np, config)
        jax.clear_caches()
        first_s, fx_out = timed(fx_call)
        fx_call()  # a second warm call
        pt_call = None
        if not args.skip_torch:
            pt_call = make_torch_call(hf_model, prompt_np,
                                      torch_kwargs(strategy, args.new_tokens, beams))
            _, pt_out = timed(pt_call)  # warm-up
            if pt_out.shape[1] != args.prompt_len + args.new_tokens:
                sys.exit(f"{name}: transformers stopped early: {pt_out.shape}")
        fx_times, pt_times, read_times = [], [], []
        for _ in range(args.repeats):
            fx_times.append(timed(fx_call)[0])
            if pt_call is not None:
                pt_times.append(timed(pt_call)[0])
            read_times.append(reader.chained())
        fx_s = statistics.median(fx_times)
        if pt_times and max(pt_times) > 3 * min(pt_times):
            warnings_.append(f"{name}: PyTorch calls took {min(pt_times):.2f} to "
                             f"{max(pt_times):.2f} s")
        tokens = args.new_tokens * batch
        agree = "-"
        if strategy == "greedy" and pt_call is not None:
            ours = np.asarray(fx_out.tokens_BL)
            theirs = pt_out[:, args.prompt_len:].numpy()
            agree = f"{(ours == theirs).mean():.0%}"
        jax.clear_caches()
        compile_s = aot_compile_time(model, strategy, prompt_np, config)
        rows.append(dict(
            name=name, batch=batch, beams=beams, fx_tps=tokens / fx_s,
            pt_tps=tokens / statistics.median(pt_times) if pt_times else None,
            compile_s=compile_s, first_s=first_s - fx_s,
            token_ms=fx_s / args.new_tokens * 1e3, read_ms=statistics.median(read_times) * 1e3,
            agree=agree))
        print(f"  {name}: flaxzoo {tokens / fx_s:.0f} tok/s"
              + (f", PyTorch {rows[-1]['pt_tps']:.0f} tok/s" if pt_times else ""),
              file=sys.stderr, flush=True)
        if args.profile:
            fx_call()  # recompiles after clear_caches, outside the trace
            profiles.append((name, profile_call(fx_call, args.new_tokens - 1)))

    print("| configuration | batch | beams | flaxzoo tok/s | PyTorch tok/s | flaxzoo / PyTorch "
          "| compile s | first call s | ms/token | / read | greedy equal |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        pt = "-" if r["pt_tps"] is None else f"{r['pt_tps']:.0f}"
        ratio = "-" if r["pt_tps"] is None else f"{r['fx_tps'] / r['pt_tps']:.2f}x"
        print(f"| {r['name']} | {r['batch']} | {r['beams']} | {r['fx_tps']:.0f} | {pt} | "
              f"{ratio} | {r['compile_s']:.2f} | {r['first_s']:.2f} | {r['token_ms']:.2f} | "
              f"{r['token_ms'] / r['read_ms']:.2f}x | {r['agree']} |")
    all_reads_ms = statistics.median(r["read_ms"] for r in rows)
    print(f"| weight read, chained (floor) | 1 | - | {1e3 / all_reads_ms:.0f} | - | - | - | - | "
          f"{all_reads_ms:.2f} | 1.00x | - |")
    print(f"\n- load average (1, 5, 15 min) at the end: {load_average()}")
    if warnings_:
        print("- WARNING: calls of one configuration differed more than 3x ("
              + "; ".join(warnings_) + "): other processes took the cores, rerun.")
    for name, lines in profiles:
        print(f"\n### Profile: {name} (top XLA operations, thread time per decode step)\n")
        print("\n".join(lines))

if __name__ == "__main__":
    main()
