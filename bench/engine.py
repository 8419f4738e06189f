"""Engine speed: prefill tokens/s and decode ms/token, with random weights, on the current device.

    PYTHONPATH=. python bench/engine.py                     # tiny and real 1.6B shapes (from the repo root)
    PYTHONPATH=. python bench/engine.py --shapes tiny,mid,real --prompt-len 64 --steps 4 --hf-generate

Shapes: tiny (64 x 2 layers), mid (512 x 8), real (2048 x 32 = Refact-1.6B, float32 needs 6.3 GB).
float32 everywhere; on CUDA also bf16, and bf16-vs-float32 logits on the same random 1.6B weights.
Numbers go through the real ``Generator`` (prefill = time to first token). ``--hf-generate`` also times
transformers' ``generate`` (greedy, same model, same prompt) as a baseline in the same run.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch

from refact_lsp.dev.checkpoints import fixture_tokenizer_path, random_model
from refact_lsp.engine.generate import GenerationRequest, Generator
from refact_lsp.engine.loading import LoadedModel, resolve_device
from refact_lsp.engine.tokenizer import FIRST_PADDING_ID, RefactTokenizer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def memory_bandwidth_gbs(device: torch.device) -> float:
    """Read bandwidth of a 1 GiB float32 reduction (best of 3)."""
    x = torch.ones(256 * 1024 * 1024, device=device)
    best = float("inf")
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        x.sum().item()
        best = min(best, time.perf_counter() - t)
    del x
    return 2**30 / best / 1e9


def make_loaded(shape: str, dtype: torch.dtype, device: torch.device, tok: RefactTokenizer) -> LoadedModel:
    model = random_model(shape, dtype=dtype, device=device)
    with torch.no_grad():
        model.lm_head.weight[
            0
        ].zero_()  # random logits ~N(0,1): <|endoftext|> at 0 never wins, runs go full length
    return LoadedModel(model, tok, device, dtype, model.config.n_positions, fixture_tokenizer_path().parent)


def bench_generator(
    loaded: LoadedModel, prompt: list[int], steps: int, repeats: int
) -> tuple[float, float, list[int]]:
    gen = Generator(loaded)
    req = GenerationRequest(prompt, max_new_tokens=steps, temperature=0.0, stop_strings=(), kv_reuse=False)
    gen.generate(GenerationRequest(prompt[:8], max_new_tokens=2, temperature=0.0, kv_reuse=False))  # warm-up
    prefill, decode, tokens = [], [], []
    for _ in range(repeats):
        r = gen.generate(req)
        prefill.append(r.prefill_s)
        if r.steps > 1:
            decode.append(r.decode_s / (r.steps - 1))
        tokens = r.token_ids
    return len(prompt) / min(prefill), 1000 * min(decode) if decode else float("nan"), tokens


def bench_hf_generate(model, prompt: list[int], steps: int, device: torch.device) -> tuple[float, list[int]]:
    ids = torch.tensor([prompt], device=device)
    kw = dict(
        do_sample=False,
        max_new_tokens=steps,
        min_new_tokens=steps,
        suppress_tokens=list(range(FIRST_PADDING_ID, model.config.vocab_size)),
        pad_token_id=0,
    )
    model.generate(ids[:, :8], **{**kw, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
    sync(device)
    t = time.perf_counter()
    out = model.generate(ids, **kw)
    sync(device)
    return time.perf_counter() - t, out[0, len(prompt) :].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="tiny,real")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=32, help="decode steps per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf-generate", action="store_true", help="also time transformers' generate")
    args = ap.parse_args()

    device = resolve_device(args.device)
    tok = RefactTokenizer.from_file(fixture_tokenizer_path())
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(19, FIRST_PADDING_ID, (args.prompt_len,), generator=g).tolist()
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    )
    bw = memory_bandwidth_gbs(device)
    print(f"device {device} ({name}); torch {torch.__version__}; measured read bandwidth {bw:.1f} GB/s")
    print(f"prompt {args.prompt_len} tokens, {args.steps} decode steps, best of {args.repeats}")

    for shape in args.shapes.split(","):
        for dtype in dtypes:
            loaded = make_loaded(shape, dtype, device, tok)
            n_params = sum(p.numel() for p in loaded.model.parameters())
            # a decode step reads every weight once, except the embedding (one row)
            n_read = n_params - loaded.model.transformer.wte.weight.numel()
            weight_gb = n_read * loaded.model.lm_head.weight.element_size() / 1e9
            pf, dec, ours = bench_generator(loaded, prompt, args.steps, args.repeats)
            floor_ms = 1000 * weight_gb / bw
            print(
                f"{shape:5s} {str(dtype).removeprefix('torch.'):8s} params {n_params / 1e6:8.1f}M  "
                f"prefill {pf:9.1f} tok/s  decode {dec:8.2f} ms/token  "
                f"(reads {weight_gb:.2f} GB/token: bandwidth floor {floor_ms:.2f} ms/token, "
                f"x{dec / floor_ms:.2f})"
            )
            if args.hf_generate:
                gen_s, theirs = bench_hf_generate(loaded.model, prompt, args.steps, device)
                ours_total = args.prompt_len / pf + (args.steps - 1) * dec / 1000
                print(
                    f"      transformers generate: {gen_s * 1000:.1f} ms for prefill + {args.steps} tokens "
                    f"vs "
                    f"ours {ours_total * 1000:.1f} ms (x{gen_s / ours_total:.2f}); "
                    f"greedy tokens agree: {theirs == ours}"
                )
            if shape == "real" and dtype == torch.float32 and device.type == "cuda":
                compare_bf16(loaded.model, prompt, device)
            del loaded
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()


@torch.inference_mode()
def compare_bf16(model, prompt: list[int], device: torch.device) -> None:
    ids = torch.tensor([prompt], device=device)
    ref = model(ids).logits[0].float()
    ref[:, FIRST_PADDING_ID:] = float("-inf")
    half = model.to(torch.bfloat16)  # in place: the float32 weights are gone afterwards
    low = half(ids).logits[0].float()
    low[:, FIRST_PADDING_ID:] = float("-inf")
    real = slice(0, FIRST_PADDING_ID)
    diff = (ref[:, real] - low[:, real]).abs()
    agree = (ref.argmax(-1) == low.argmax(-1)).float().mean().item()
    print(
        f"      bf16 vs float32 logits (same random 1.6B weights, {len(prompt)} positions): "
        f"max abs diff {diff.max().item():.4f}, mean {diff.mean().item():.5f}, "
        f"logit std {ref[:, real].std().item():.3f}, argmax agreement {100 * agree:.1f}%"
    )


if __name__ == "__main__":
    main()
