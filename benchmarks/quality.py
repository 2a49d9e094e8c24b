"""`llmos bench quality`: each weight mode's speed, memory and quality against fp32.

Every mode (--modes, default all) is measured in a process of its own, so its RSS is its own:
  - rss_mb: resident memory after the model is loaded in that mode (and peak_rss_mb during load);
  - decode tok/s of one sequence alone and of 32 together (the backend's step, no HTTP), and
    prefill tok/s of a 256-token chunk;
  - quality on a fixed text (TEXT below, ~900 tokens, read in 256-token chunks): perplexity, and
    top-1 agreement, the share of positions whose most likely next token equals fp32's;
  - greedy agreement: 8 questions answered greedily for --tokens tokens alone; the share of
    generated tokens before the first one that differs from fp32's answer (1.0 = identical);
  - batch_invariant: the same 4 questions decoded together give exactly what each gives alone.

    llmos bench quality                       # all modes, table + JSON
    llmos bench quality --modes fp32,int8 --json q.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from llmos.config import WEIGHT_MODES

TEXT = """\
The lighthouse at the end of the harbour had been dark for eleven years when Mara arrived with a
box of tools and a letter from the harbour master. The letter said only that the light was hers to
mend, if she could, and that nobody would pay her for it. She climbed the spiral stairs on the first
evening, counting the steps to keep her mind off the wind, and found the great lens cracked along one
edge, its brass frame green with salt. She sat beside it until the sun went down, listening to the
sea, and decided that she would stay the winter.

A computer's operating system is the program that shares the machine among everything that wants
to use it. It decides which program runs on the processor next and for how long, it gives each
program its own view of memory so that one cannot read or damage another's, and it stands between
programs and devices such as disks and network cards. A program asks the operating system for a
service through a system call: it places the number of the service and its arguments where the
kernel expects them, and executes an instruction that switches the processor into a privileged mode.
The kernel checks the request, performs it, and returns a result or an error code.

Scheduling is a matter of trade-offs. A scheduler that always runs the shortest job first finishes
the most jobs in a given time, but a long job may wait forever. Round robin gives every runnable
program a short slice of time in turn, which is fair but pays for every switch. Many systems weigh
programs by priority and track how much processor time each has received, so that a program which
has waited long enough is preferred over one that has just run. The right choice depends on whether
the machine serves people waiting at keyboards or batches of work that nobody watches.

In the spring the fishing boats came back, and the fishermen noticed the new glass in the tower.
Some of them laughed at the woman who talked to the gulls; others left fish on her doorstep without
a word. On the first night of May she lit the lamp. The beam swept across the water, pale at first
and then steady, and the boats coming home late turned toward it one after another. Nobody thanked
her, but in the morning there was bread on the step as well as fish, and a child had drawn a
lighthouse in chalk on the harbour wall.

Memory is the other resource that an operating system must divide. When programs together want more
memory than the machine has, the system moves the pages that have not been used for a while to disk
and brings them back when they are touched again. Choosing which page to move out is the problem of
page replacement: the least recently used page is a good guess, because programs tend to use again
what they used a moment ago. Approximations such as the clock algorithm keep a reference bit for each
page and sweep through them, giving each recently referenced page a second chance before it leaves.

Water boils at a lower temperature on a mountain than at the sea, because the air pressure is lower
and the molecules escape the liquid more easily. A cook in a high village must boil eggs for longer,
and bread rises faster there because the gas in the dough expands more. Climbers melt snow for
drinking water and find that tea never tastes quite right, since the water is not hot enough to draw
out the flavour. These small differences add up, and people who live at altitude learn them young,
the way sailors learn to read the colour of the sky before a storm.
"""

QUESTIONS = [
    "What is an operating system?", "Why is the sky blue?", "How does a hash table work?", "What causes the seasons?",
    "Write a haiku about the sea.", "Explain recursion to a child.", "What is the capital of France?", "Give three tips for learning to cook.",
]
PREFILL_CHUNK = 256


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(mode: str, model: str, tokens: int, threads: int, device: str) -> dict[str, Any]:
    """Everything about one mode, in this process."""
    import torch

    from llmos.kernel.model.backend import Backend, WorkItem

    backend = Backend.load(model, weights=mode, threads=threads, device=device)
    rss = _rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # Teacher-forced pass over the fixed text: next-token NLL and argmax at every position.
    ids = backend.encode(TEXT)
    kv = backend.new_kv()
    nll: list[float] = []
    top1: list[int] = []
    for start in range(0, len(ids) - 1, PREFILL_CHUNK):
        chunk = ids[start : min(start + PREFILL_CHUNK, len(ids) - 1)]
        plan = backend.plan([WorkItem(kv, chunk, True)])
        plan.keep = list(range(len(chunk)))
        logits = backend.run(plan).float()
        targets = torch.tensor(ids[start + 1 : start + 1 + len(chunk)], device=logits.device)
        logprobs = torch.log_softmax(logits, dim=-1)
        nll += (-logprobs.gather(1, targets[:, None])[:, 0]).tolist()
        top1 += logits.argmax(dim=-1).tolist()

    prompts = [backend.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]

    def decode(batch: list[list[int]], n: int) -> list[list[int]]:
        kvs = [backend.new_kv() for _ in batch]
        logits = backend.step([WorkItem(kv, p, True) for kv, p in zip(kvs, batch)])
        out = [[t] for t in logits.argmax(dim=-1).tolist()]
        for _ in range(n - 1):
            logits = backend.step([WorkItem(kv, [o[-1]], True) for kv, o in zip(kvs, out)])
            for o, t in zip(out, logits.argmax(dim=-1).tolist()):
                o.append(t)
        return out

    greedy = [decode([p], tokens)[0] for p in prompts]
    batch_invariant = decode(prompts[:4], 24) == [g[:24] for g in greedy[:4]]

    def decode_rate(batch: int, steps: int = 24) -> float:
        kvs = [backend.new_kv() for _ in range(batch)]
        backend.step([WorkItem(kv, prompts[i % len(prompts)], False) for i, kv in enumerate(kvs)])
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            backend.step([WorkItem(kv, [13], True) for kv in kvs])
            times.append(time.perf_counter() - started)
        return batch / sorted(times)[len(times) // 2]

    def prefill_rate(repeats: int = 3) -> float:
        chunk = ids[:PREFILL_CHUNK]
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            backend.step([WorkItem(backend.new_kv(), chunk, True)])
            times.append(time.perf_counter() - started)
        return len(chunk) / min(times)

    return {
        "mode": mode, "device": str(backend.device), "threads": torch.get_num_threads(),
        "rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1),
        "decode_tok_s_1": round(decode_rate(1), 2), "decode_tok_s_32": round(decode_rate(32), 2),
        "prefill_tok_s": round(prefill_rate(), 1),
        "text_tokens": len(ids), "nll": nll, "top1": top1, "greedy": greedy, "batch_invariant": batch_invariant,
    }


def compare(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Quality of each mode against fp32 (the first result that is fp32, else the first)."""
    reference = next((r for r in results if r["mode"] == "fp32"), results[0])
    rows = []
    for r in results:
        agree = sum(a == b for a, b in zip(r["top1"], reference["top1"])) / len(reference["top1"])
        matched = []
        for ours, ref in zip(r["greedy"], reference["greedy"]):
            same = next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), len(ref))
            matched.append(same / len(ref))
        rows.append({
            "mode": r["mode"], "device": r["device"], "threads": r["threads"], "batch_invariant": r["batch_invariant"],
            "rss_mb": r["rss_mb"], "peak_rss_mb": r["peak_rss_mb"],
            "decode_tok_s_1": r["decode_tok_s_1"], "decode_tok_s_32": r["decode_tok_s_32"], "prefill_tok_s": r["prefill_tok_s"],
            "perplexity": round(math.exp(sum(r["nll"]) / len(r["nll"])), 4),
            "top1_agreement": round(agree, 4),
            "greedy_agreement": round(sum(matched) / len(matched), 4),
            "greedy_identical": sum(m == 1.0 for m in matched), "greedy_prompts": len(matched),
            "text_tokens": r["text_tokens"], "reference": reference["mode"],
        })
    return rows


def print_table(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title=f"bench quality: weight modes against {rows[0]['reference']} ({rows[0]['text_tokens']}-token text)")
    for col in ("mode", "batch-inv.", "RSS MB", "decode tok/s x1", "x32", "prefill tok/s", "perplexity", "top-1 agree", "greedy agree"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for r in rows:
        table.add_row(
            r["mode"], "yes" if r["batch_invariant"] else "no", f"{r['rss_mb']:.0f}", f"{r['decode_tok_s_1']:.1f}",
            f"{r['decode_tok_s_32']:.0f}", f"{r['prefill_tok_s']:.0f}", f"{r['perplexity']:.3f}",
            f"{r['top1_agreement']:.1%}", f"{r['greedy_agreement']:.1%} ({r['greedy_identical']}/{r['greedy_prompts']})",
        )
    console.print(table)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llmos bench quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default=",".join(WEIGHT_MODES), help="comma-separated weight modes (default: all)")
    p.add_argument("--model", default=None, help="model spec (default: LLMOS_MODEL or smollm2)")
    p.add_argument("--tokens", type=int, default=64, help="greedy tokens per question (64)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", help="write the table's figures here")
    p.add_argument("--child", help=argparse.SUPPRESS)  # measure one mode, write raw results to --out
    p.add_argument("--out", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    opts.modes = [m for m in opts.modes.split(",") if m]
    for mode in opts.modes:
        if mode not in WEIGHT_MODES:
            p.error(f"unknown mode {mode!r}; choose from {', '.join(WEIGHT_MODES)}")
    return opts


def main(argv: list[str] | None = None) -> int:
    from llmos.config import KernelConfig

    opts = parse(argv or [])
    model = opts.model or KernelConfig().model
    if opts.child:
        Path(opts.out).write_text(json.dumps(measure(opts.child, model, opts.tokens, opts.threads, opts.device)))
        return 0
    console = Console(width=max(130, Console().width))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in opts.modes:
            console.print(f"measuring {mode} ...")
            out = Path(tmp) / f"{mode}.json"
            cmd = [sys.executable, "-m", "llmos.benchmarks.quality", "--child", mode, "--out", str(out), "--model", model,
                   "--tokens", str(opts.tokens), "--threads", str(opts.threads), "--device", opts.device]
            done = subprocess.run(cmd)
            if done.returncode != 0:
                console.print(f"[red]{mode} failed (exit {done.returncode})")
                continue
            results.append(json.loads(out.read_text()))
    if not results:
        return 1
    rows = compare(results)
    print_table(rows, console)
    if opts.json:
        Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.json).write_text(json.dumps(rows, indent=2))
        console.print(f"wrote {opts.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
