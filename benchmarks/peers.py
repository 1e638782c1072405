"""One adapter per inference library, all with the same small interface, so the harness times
each the same way:

    runner = make(peer, variant, checkpoint, gguf_dir, threads)    # loads the weights
    runner.prefill(ids)          seconds to run one prompt (list of ids) and produce its next token
    runner.decode(prompts, new)  seconds for `new` greedy steps of len(prompts) sequences, after an
                                 untimed prefill of the prompts; NotSupported where the peer cannot
    runner.logits(ids)           float32 numpy (len(ids), vocab): next-token logits at every position
    runner.weight_bytes()        bytes of weights one decode step reads (every matrix once; the
                                 tied embedding / head once)

`unavailable(peer, variant)` says why a peer cannot run here (a missing package), or None."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import torch

CONFIGS = [  # (peer, variant); the first is the reference of the quality table
    ("mpt_lite", "fp32"), ("mpt_lite", "int8"), ("mpt_lite", "nf4"), ("mpt_lite", "int4"), ("mpt_lite", "int4-g64"),
    ("mpt_lite", "int4-e6"),
    ("llama.cpp", "f16"), ("llama.cpp", "q8_0"), ("llama.cpp", "q4_0"),
    ("transformers", "fp32"), ("transformers", "bf16"), ("transformers", "bnb-int8"), ("transformers", "bnb-nf4"),
]


class NotSupported(Exception):
    pass


def unavailable(peer: str, variant: str) -> str | None:
    need = {"llama.cpp": ["llama_cpp", "gguf"], "transformers": ["transformers"]}.get(peer, [])
    if variant.startswith("bnb"):
        need.append("bitsandbytes")
    for mod in need:
        if importlib.util.find_spec(mod) is None:
            pkg = {"llama_cpp": "llama-cpp-python"}.get(mod, mod)
            return f"{mod} is not installed (pip install {pkg}, or pip install -e '.[bench]')"
    return None


def _tensor_bytes(module: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class MptLite:
    def __init__(self, checkpoint: Path, variant: str, threads: int) -> None:
        import mpt_lite
        from mpt_lite import ops

        ops.set_num_threads(threads)
        # a 4-bit variant ending in "-e4" holds the tied embedding at 4 bits too (embedding_bits=4), "-e6" at int6
        base, emb = (variant[:-3], int(variant[-1])) if variant.endswith(("-e4", "-e6")) else (variant, None)
        bits, qtype, dtype = {"fp32": (None, None, torch.float32), "bf16": (None, None, torch.bfloat16),
                              "int8": (8, None, torch.float32), "nf4": (4, "nf4", torch.float32),
                              "int4": (4, "int4", torch.float32), "int4-g64": (4, "int4", torch.float32),
                              "int4-g128": (4, "int4", torch.float32)}[base]
        kw = {"int4-g64": {"group_size": 64}, "int4-g128": {"group_size": 128}}.get(base, {})
        if emb:
            if bits != 4:
                raise ValueError(f"{variant}: -e4 / -e6 are for the 4-bit variants")
            kw["embedding_bits"] = emb
        self.model = mpt_lite.MptForCausalLM.from_pretrained(checkpoint, bits=bits, quant_type=qtype, dtype=dtype,
                                                             **kw)
        self.model.eval()
        self._engine_kept = None

    def _engine(self, tokens: int):
        """The engine for this batch-token budget, kept across calls (each call's requests finish within it), as
        the llama.cpp peer keeps its context: a new engine's KV pages are faulted in and zeroed by the first
        prompt written to them (a 2,000-token float32 prompt: 786 MB, 2-4% of its prefill), which a chat app
        or server pays once, not per prompt. Prefix caching stays off, so nothing computed is reused."""
        from mpt_lite import Engine

        budget = max(tokens, 512)
        if self._engine_kept is None or self._engine_kept.max_batch_tokens != budget:
            self._engine_kept = None  # one engine alive at a time (peak RSS as before)
            self._engine_kept = Engine(self.model, max_bytes=2 << 30, max_batch_tokens=budget, prefix_caching=False)
        return self._engine_kept

    def prefill(self, ids: list[int]) -> float:
        engine = self._engine(len(ids))
        engine.add_request(ids, 1)
        with torch.inference_mode():
            return _timed(engine.step)

    def decode(self, prompts: list[list[int]], new: int) -> float:
        engine = self._engine(sum(map(len, prompts)))
        for p in prompts:
            engine.add_request(p, new + 1)
        with torch.inference_mode():
            engine.step()  # the prompts and the first token
            return _timed(lambda: [engine.step() for _ in range(new)])

    def logits(self, ids: list[int]) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.tensor([ids])).logits[0].float().numpy()

    def weight_bytes(self) -> int:
        return _tensor_bytes(self.model)


class Transformers:
    def __init__(self, checkpoint: Path, variant: str, threads: int) -> None:
        import transformers

        kw: dict = {"dtype": torch.bfloat16 if variant == "bf16" else torch.float32}
        if variant.startswith("bnb"):
            bnb = (transformers.BitsAndBytesConfig(load_in_8bit=True) if variant == "bnb-int8" else
                   transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                   bnb_4bit_compute_dtype=torch.bfloat16))
            kw.update(quantization_config=bnb, device_map="cpu", dtype=torch.bfloat16)
        self.model = transformers.MptForCausalLM.from_pretrained(str(checkpoint), **kw).eval()

    def prefill(self, ids: list[int]) -> float:
        x = torch.tensor([ids])
        with torch.inference_mode():
            return _timed(lambda: self.model(x, use_cache=True, logits_to_keep=1).logits.argmax(-1))

    def decode(self, prompts: list[list[int]], new: int) -> float:
        if len({len(p) for p in prompts}) != 1:
            raise NotSupported("prompts of different lengths")
        with torch.inference_mode():
            out = self.model(torch.tensor(prompts), use_cache=True, logits_to_keep=1)
            state = [out.past_key_values, out.logits[:, -1:].argmax(-1)]

            def loop():
                for _ in range(new):
                    o = self.model(state[1], past_key_values=state[0], use_cache=True)
                    state[0], state[1] = o.past_key_values, o.logits[:, -1:].argmax(-1)

            return _timed(loop)

    def logits(self, ids: list[int]) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.tensor([ids])).logits[0].float().numpy()

    def weight_bytes(self) -> int:
        return _tensor_bytes(self.model)


class LlamaCpp:
    """llama-cpp-python's Llama for single sequences; its low-level llama_batch API for several
    sequences decoded together (one llama_decode call per step)."""

    def __init__(self, gguf_path: Path, threads: int, n_ctx: int = 2048, logits_all: bool = False) -> None:
        import llama_cpp

        self.path, self.threads = gguf_path, threads
        self.llm = llama_cpp.Llama(str(gguf_path), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                                   n_batch=512, n_ubatch=512, logits_all=logits_all, verbose=False)

    def prefill(self, ids: list[int]) -> float:
        self.llm.reset()

        def run():
            self.llm.eval(ids)
            # scores has n_batch rows (no logits_all): a prompt longer than n_batch reads its last row
            int(np.argmax(self.llm.scores[min(self.llm.n_tokens, len(self.llm.scores)) - 1]))

        return _timed(run)

    def decode(self, prompts: list[list[int]], new: int) -> float:
        if len(prompts) > 1:
            return self._decode_batch(prompts, new)
        self.llm.reset()
        self.llm.eval(prompts[0])

        def loop():
            for _ in range(new):
                self.llm.eval([int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))])

        return _timed(loop)

    def _decode_batch(self, prompts: list[list[int]], new: int) -> float:
        import llama_cpp as L

        B = len(prompts)
        cp = L.llama_context_default_params()
        cp.n_ctx = sum(len(p) + new + 1 for p in prompts) + 64
        cp.n_batch = cp.n_ubatch = max(512, sum(map(len, prompts)))
        cp.n_seq_max = B
        cp.n_threads = cp.n_threads_batch = self.threads
        if hasattr(cp, "kv_unified"):
            cp.kv_unified = True
        ctx = L.llama_init_from_model(self.llm.model, cp)
        if not ctx:
            raise NotSupported(f"llama_init_from_model failed for {B} sequences")
        vocab = self.llm.n_vocab()
        batch = L.llama_batch_init(cp.n_batch, 0, B)
        try:
            def submit(items):  # items: (token, pos, seq, want_logits)
                batch.n_tokens = len(items)
                for i, (tok, pos, seq, want) in enumerate(items):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
                    batch.seq_id[i][0], batch.logits[i] = seq, want
                if L.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
                rows = [i for i, it in enumerate(items) if it[3]]
                return [int(np.argmax(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(vocab,))))
                        for i in rows]

            items = [(t, j, s, j == len(p) - 1) for s, p in enumerate(prompts) for j, t in enumerate(p)]
            nxt = submit(items)
            pos = [len(p) for p in prompts]

            def loop():
                nonlocal nxt
                for _ in range(new):
                    nxt = submit([(nxt[s], pos[s], s, True) for s in range(B)])
                    for s in range(B):
                        pos[s] += 1

            return _timed(loop)
        finally:
            L.llama_batch_free(batch)
            L.llama_free(ctx)

    def logits(self, ids: list[int]) -> np.ndarray:
        llm = LlamaCpp(self.path, self.threads, logits_all=True).llm
        llm.reset()
        llm.eval(ids)
        out = np.array(llm.scores[: len(ids)], dtype=np.float32)
        llm.close()
        return out

    def weight_bytes(self) -> int:
        import gguf

        return int(sum(t.n_bytes for t in gguf.GGUFReader(str(self.path)).tensors))


def make(peer: str, variant: str, checkpoint: Path, gguf_dir: Path, threads: int):
    if peer == "mpt_lite":
        return MptLite(checkpoint, variant, threads)
    if peer == "transformers":
        return Transformers(checkpoint, variant, threads)
    if peer == "llama.cpp":
        path = gguf_dir / f"model-{variant}.gguf"
        if not path.exists():
            raise FileNotFoundError(f"{path} missing (the harness converts the checkpoint first)")
        return LlamaCpp(path, threads)
    raise ValueError(f"unknown peer {peer!r}")
