"""What the noise costs inside one compiled update kernel (a part of bench/step.py).

One flat tensor of 134M elements (a 4M-element one with --cpu), a sign-converted Adam step
compiled with static shapes, the noise drawn in four ways:

* none (deterministic sign: the floor, same bytes);
* signify's counter hash (`signify.rng`, int64 arithmetic);
* the same hash in int32 arithmetic (a candidate: bit-identical, half the integer work);
* ``torch.rand_like`` (inductor's Philox; not reproducible across backends).

And in bf16 (parameters and moments), written with round-to-nearest or with stochastic
rounding (one hash per written buffer). Each kernel moves the same bytes, so any gap
between rows is the cost of the random numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bench import common
from signify import rng

_MUL = 0x45D9F3B


def _mix_i32(x: torch.Tensor) -> torch.Tensor:
    """`signify.rng.mix32` on int32 with wrapping products (bit-identical mod 2**32)."""
    x = ((x >> 16) & 0xFFFF) ^ x
    x = x * _MUL
    x = ((x >> 16) & 0xFFFF) ^ x
    x = x * _MUL
    return ((x >> 16) & 0xFFFF) ^ x


def random_bits_i32(key: torch.Tensor, n: int, device: torch.device, stream: int) -> torch.Tensor:
    idx = torch.arange(n, device=device, dtype=torch.int32)
    k1 = (key ^ stream) & rng.MASK32
    x = _mix_i32(idx ^ k1.to(torch.int32))
    k2 = ((k1 * 0x2C1B3C6D & rng.MASK32) ^ 0x297A2D39).to(torch.int32)
    return _mix_i32(x ^ k2)


def _adam(g, m, v, b1, b2, eps, bc1, bc2):  # type: ignore[no-untyped-def]
    """The new moments and Adam's (numerator, scale), in float32."""
    gf = g.float()
    m_new = torch.lerp(m.float(), gf, 1 - b1)
    v_new = v.float() * b2 + (1 - b2) * gf * gf
    return m_new, v_new, m_new / bc1, v_new.sqrt() / bc2.sqrt() + eps


def _i32(c: int) -> int:
    c &= rng.MASK32
    return c - 2**32 if c >= 2**31 else c


def weyl_bits_i32(key: torch.Tensor, n: int, device: torch.device, stream: int) -> torch.Tensor:
    """A cheaper candidate hash (3 products instead of 4): a Weyl sequence ``i * golden + k``
    through one "lowbias32" finaliser (C. Wellons' constants), SplitMix's construction on 32
    bits. Not signify's stream; measured here to see what the hash costs in bf16."""
    idx = torch.arange(n, device=device, dtype=torch.int32)
    k1 = ((key ^ stream) & rng.MASK32).to(torch.int64)
    x = idx * _i32(0x9E3779B9) + torch.where(k1 >= 2**31, k1 - 2**32, k1).to(torch.int32)
    x = ((x >> 16) & 0xFFFF) ^ x
    x = x * _i32(0x7FEB352D)
    x = ((x >> 15) & 0x1FFFF) ^ x
    x = x * _i32(0x846CA68B)
    return ((x >> 16) & 0xFFFF) ^ x


_HASHES = {"hash32": random_bits_i32, "weyl": weyl_bits_i32}


def _kernel_shared(hash_: str, n_hash: int) -> Callable[..., None]:
    """bf16 stochastic Adam with ``n_hash`` hashes per element: 3 is what signify draws (the
    sign's 24 bits; p and m share one hash, 16 bits each; v), 2 gives the sign 16 bits and
    shares the other half with the parameter's rounding."""
    bits_fn = _HASHES[hash_]

    def step(p, g, m, v, key, lr, b1, b2, eps, bc1, bc2):  # type: ignore[no-untyped-def]
        n = p.numel()
        m_new, v_new, a, s = _adam(g, m, v, b1, b2, eps, bc1, bc2)
        h1 = bits_fn(key, n, p.device, 1)
        h2 = bits_fn(key, n, p.device, 7)
        if n_hash == 3:
            u = rng.uniform_pm1(h1)
            r_p, r_m, r_v = h2, h2 >> 16, bits_fn(key, n, p.device, 8)
        else:
            k = ((h1 >> 16) & 0xFFFF).to(torch.float32)
            u = ((k - 32768.0) * 2.0 + 1.0) * (2.0**-16)
            r_p, r_m, r_v = h1, h2, h2 >> 16
        d = torch.sign(a + s * u)
        x = p.float() - lr * d
        for dst, val, r in ((m, m_new, r_m), (v, v_new, r_v), (p, x, r_p)):
            dst.copy_(rng.stochastic_round(val, torch.bfloat16, r))

    return step


def _kernel(noise: str, sr: str) -> Callable[..., None]:
    if noise.startswith("shared"):  # "shared:<hash>:<n>"
        _, hash_, n_hash = noise.split(":")
        return _kernel_shared(hash_, int(n_hash))

    def step(p, g, m, v, key, lr, b1, b2, eps, bc1, bc2):  # type: ignore[no-untyped-def]
        n = p.numel()
        m_new, v_new, a, s = _adam(g, m, v, b1, b2, eps, bc1, bc2)
        if noise == "hash64":
            u = rng.uniform_pm1(rng.random_bits(key, n, p.device, 1))
        elif noise == "hash32":
            u = rng.uniform_pm1(random_bits_i32(key, n, p.device, 1))
        elif noise == "rand_like":
            u = torch.rand_like(a) * 2 - 1
        else:
            u = None
        d = torch.sign(a) if u is None else torch.sign(a + s * u)
        x = p.float() - lr * d
        for i, (dst, val) in enumerate(((m, m_new), (v, v_new), (p, x))):
            if dst.dtype == torch.bfloat16 and sr != "nearest":
                if sr == "hash64":
                    bits = rng.random_bits(key, n, p.device, 7 + i)
                else:
                    bits = random_bits_i32(key, n, p.device, 7 + i).to(torch.int64)
                val = rng.stochastic_round(val, torch.bfloat16, bits)
            dst.copy_(val.to(dst.dtype))

    return step


def check_i32(device: torch.device) -> bool:
    """This file's int32 hash gives signify's bits exactly (eager here)."""
    key = torch.tensor(rng.tensor_key(3) ^ 0x9E3779B9, dtype=torch.int64, device=device)
    a = rng.random_bits(key, 1 << 16, device, 5).to(torch.int64) & rng.MASK32
    b = random_bits_i32(key, 1 << 16, device, 5).to(torch.int64) & rng.MASK32
    return bool(torch.equal(a, b))


def run(device: torch.device, cpu: bool, copy_bw: float) -> list[dict[str, Any]]:
    n = (1 << 22) if cpu else 32 * 2048 * 2048
    out: list[dict[str, Any]] = []
    cases = [
        ("fp32, deterministic sign", torch.float32, "none", "nearest"),
        ("fp32, signify hash (int64)", torch.float32, "hash64", "nearest"),
        ("fp32, hash in int32", torch.float32, "hash32", "nearest"),
        ("fp32, torch.rand_like", torch.float32, "rand_like", "nearest"),
        ("bf16, det. sign, round-to-nearest", torch.bfloat16, "none", "nearest"),
        ("bf16, hash noise + SR writes (int64)", torch.bfloat16, "hash64", "hash64"),
        ("bf16, hash noise + SR writes (int32)", torch.bfloat16, "hash32", "hash32"),
        ("bf16, 3 hashes (signify: shared SR bits)", torch.bfloat16, "shared:hash32:3", ""),
        ("bf16, 3 Weyl hashes", torch.bfloat16, "shared:weyl:3", ""),
        ("bf16, 2 hashes (16-bit sign noise)", torch.bfloat16, "shared:hash32:2", ""),
        ("bf16, 2 Weyl hashes (16-bit sign noise)", torch.bfloat16, "shared:weyl:2", ""),
    ]
    if cpu:
        cases = cases[:2] + cases[4:6] + cases[7:9]
    print(f"int32 hash == signify hash: {check_i32(device)}", flush=True)
    gen = torch.Generator(device=device).manual_seed(0)
    scal = [torch.tensor(x, device=device) for x in (1e-4, 0.9, 0.999, 1e-8, 0.5, 0.25)]
    key = torch.tensor(12345, dtype=torch.int64, device=device)
    for label, dtype, noise, sr in cases:
        bufs = [torch.randn(n, device=device, generator=gen).to(dtype) for _ in range(4)]
        bufs[3] = bufs[3].abs()  # v >= 0
        fn = torch.compile(_kernel(noise, sr), fullgraph=True, dynamic=False)
        t = common.time_ms(
            lambda fn=fn, bufs=bufs: fn(*bufs, key, *scal),
            device,
            warmup=3,
            reps=3 if cpu else 20,
            windows=3,
        )
        bpp = 7 * bufs[0].element_size()  # p, m, v read + written, g read
        row = {
            "kernel": label,
            "B_param": bpp,
            "ms": t["median_ms"],
            "pct_copy": 100 * bpp * n / (t["median_ms"] * 1e-3) / copy_bw,
        }
        print(row, flush=True)
        out.append(row)
        del bufs
    return out


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="a 4M-element smoke run on the CPU")
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    copy_bw = common.copy_bandwidth(device, 2**24 if args.cpu else 2**30)
    print(f"copy bandwidth {copy_bw / 1e12:.3f} TB/s on {device}", flush=True)
    rows = run(device, args.cpu, copy_bw)
    if args.out:
        import json
        import pathlib

        payload = {"environment": common.environment(device), "copy_TBps": copy_bw / 1e12}
        pathlib.Path(args.out).write_text(json.dumps({**payload, "rows": rows}, indent=2))
    print(common.table(rows, ["kernel", "B_param", "ms", "pct_copy"]))


if __name__ == "__main__":
    main()
