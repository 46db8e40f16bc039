"""PyTorch baselines for bench/gpu/decode.ts, on the same card in the same run: what a user would write
instead of the SDK. Prints one JSON object (milliseconds: CUDA-event medians of 30 samples after warm-ups;
inputs rotate over several sets so L2 does not hold them).

  python3 bench/gpu/torch_baseline.py > torch.json
"""
import json
import math
import statistics
import sys

import torch
import torch.nn.functional as F

dev = torch.device("cuda")
ITER = 30


def timed(fn, inner=1, warm=5, samples=ITER):
    for i in range(warm):
        fn(i)
    torch.cuda.synchronize()
    times = []
    k = 0
    for _ in range(samples):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn(k)
            k += 1
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / inner)
    return statistics.median(times)


out = {"torch_version": torch.__version__, "device": torch.cuda.get_device_name()}
gib = torch.randn(1 << 29, device=dev, dtype=torch.float16)
out["read_gbps"] = (1 << 30) / (timed(lambda i: gib.sum()) * 1e6)
dst = torch.empty_like(gib)
out["copy_gbps"] = 2 * (1 << 30) / (timed(lambda i: dst.copy_(gib)) * 1e6)
del gib, dst

cases = [
    ("decode.b1.h32.n4096", 1, 32, 32, 4096),
    ("decode.b8.h32.n4096", 8, 32, 32, 4096),
    ("decode.gqa32x8.b16.n8192", 16, 32, 8, 8192),
]
d = 128
for name, batch, qh, kvh, n in cases:
    kv_bytes = batch * kvh * n * d * 2 * 2
    sets = max(2, math.ceil((200 << 20) / kv_bytes))
    ks = [torch.randn(batch, kvh, n, d, device=dev, dtype=torch.float16) for _ in range(sets)]
    vs = [torch.randn(batch, kvh, n, d, device=dev, dtype=torch.float16) for _ in range(sets)]
    q = torch.randn(batch, qh, 1, d, device=dev, dtype=torch.float16)
    g = qh // kvh
    scale = 1 / math.sqrt(d)
    inner = max(1, math.ceil(8 / sets)) * sets

    def sdpa(i):
        return F.scaled_dot_product_attention(q, ks[i % sets], vs[i % sets], enable_gqa=g > 1)

    def probs(i):
        # Attention that also returns the probabilities (what a tracker needs): grouped queries share a KV head.
        k = ks[i % sets]
        v = vs[i % sets]
        qg = q.view(batch, kvh, g, d)
        p = torch.softmax((qg @ k.transpose(-1, -2)).float() * scale, dim=-1)
        o = (p.to(torch.float16) @ v).view(batch, qh, 1, d)
        return o, p

    def probs_repeat(i):
        # The textbook version: every query head gets its own copy of its KV head (repeat_kv, as in HF
        # transformers' eager attention), then matmul, softmax, matmul.
        k = ks[i % sets].repeat_interleave(g, dim=1) if g > 1 else ks[i % sets]
        v = vs[i % sets].repeat_interleave(g, dim=1) if g > 1 else vs[i % sets]
        p = torch.softmax((q @ k.transpose(-1, -2)).float() * scale, dim=-1)
        return p.to(torch.float16) @ v, p

    out[name + ".sdpa_ms"] = timed(sdpa, inner)
    out[name + ".probs_repeat_ms"] = timed(probs_repeat, inner)
    out[name + ".probs_ms"] = timed(probs, inner)
    del ks, vs

for name, batch, n in [("compact.b1.n4096", 1, 4096), ("compact.b32.n2048", 32, 2048)]:
    kvh = 8
    keep = n - int(n * 0.2)
    k = torch.randn(batch, kvh, n, d, device=dev, dtype=torch.float16)
    v = torch.randn(batch, kvh, n, d, device=dev, dtype=torch.float16)
    scores = torch.rand(batch, kvh, n, device=dev)

    def compact(i):
        idx = torch.topk(scores, keep, dim=-1, sorted=False).indices.sort(dim=-1).values
        gather = idx.unsqueeze(-1).expand(-1, -1, -1, d)
        return k.gather(2, gather), v.gather(2, gather), scores.gather(2, idx)

    out[name + ".ms"] = timed(compact)
    del k, v, scores

# Group quantisation to int4 written as PyTorch ops (what bench/gpu/packed.ts compares its packer with):
# 1 GiB of f16, groups of 32 along rows, min/max, scale, round, two codes a byte.
x = torch.randn(1 << 29, device=dev, dtype=torch.float16).view(-1, 32)


def quant(i):
    mn = x.amin(-1, keepdim=True)
    mx = x.amax(-1, keepdim=True)
    scale = ((mx - mn) / 15).clamp_min(1e-8)
    q = ((x - mn) / scale).round().clamp(0, 15).to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4), scale, mn


out["pack.int4.axis1.gbps"] = (1 << 30) / (timed(quant, samples=10) * 1e6)
del x

json.dump(out, sys.stdout, indent=1)
print()
