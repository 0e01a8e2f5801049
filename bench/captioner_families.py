"""The captioner families' sampling path against Hugging Face's own sampler, side by side.

For each non-BLIP family built from config at test sizes (BLIP-2 with an OPT decoder, LLaVA-1.5
with a Llama decoder; random weights, CPU), images/s of

- `PromptedCaptioner.generate`: CapFilt's path (per-image sampling streams via `PerRowSampler`,
  greedy decoding over Gumbel-perturbed nucleus scores, prompt inputs built once);
- `model.generate(do_sample=True, top_p, num_return_sequences=K)` on the processor's inputs:
  what a user of the model card would run, one random stream for the whole batch;

at the same batch, K, new tokens (min = max, so both decode the same number of steps),
top_p and repetition penalty. Tiny models make the per-step overhead of the sampling path as
large a share of the time as it can be: the ratio is the worst case of what our guarantees
cost.

    .venv/bin/python bench/captioner_families.py [--batch 64 --captions 3 --tokens 20]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.config import Sampling  # noqa: E402
from curation.models import blip, captioners, tiny  # noqa: E402

BUILDERS = {
    "BLIP-2 (OPT)": tiny.save_blip2_captioner,
    "LLaVA-1.5 (Llama)": tiny.save_llava_captioner,
}


def rate(step, images: int, repeats: int) -> float:
    """Images/s of `step()` (best of `repeats`, after one warm-up call)."""
    step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return images / best


def measure(name: str, folder: Path, args) -> str:
    captioner = captioners.load_captioner(str(folder), torch.device("cpu"), torch.float32)
    images = [Image.new("RGB", (64, 48), (i % 256, 90, 200 - i % 200)) for i in range(args.batch)]
    pixels = blip.preprocess(captioner.processor, images)
    sampling = Sampling(
        num_captions=args.captions, min_new_tokens=args.tokens, max_new_tokens=args.tokens
    )
    seeds = list(range(args.batch))
    ours = rate(lambda: captioner.generate(pixels, sampling, seeds), args.batch, args.repeats)
    token = captioners.image_token(captioner.model.config)
    text = captioners.prompt_inputs(captioner.processor, sampling.prompt, token)
    hf_inputs = {k: v.expand(args.batch, -1) for k, v in text.items()}

    def hf_generate():
        with torch.inference_mode():
            captioner.model.generate(
                **hf_inputs,
                pixel_values=pixels,
                do_sample=True,
                top_k=0,
                top_p=sampling.top_p,
                repetition_penalty=sampling.repetition_penalty,
                num_return_sequences=args.captions,
                min_new_tokens=args.tokens,
                max_new_tokens=args.tokens,
            )

    theirs = rate(hf_generate, args.batch, args.repeats)
    return f"| {name} | {args.batch} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--captions", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"K = {args.captions}, {args.tokens} new tokens, torch threads {torch.get_num_threads()}")
    print("| family | batch | PromptedCaptioner images/s | HF sampling images/s | ours / HF |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in BUILDERS.items():
            print(measure(name, build(Path(tmp) / name.split()[0]), args), flush=True)


if __name__ == "__main__":
    main()
