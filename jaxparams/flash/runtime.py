"""Token-by-token greedy decoding with FFN neurons loaded from disk under a memory budget.

Embeddings, attention, norms, the head, the predictors and the KV cache stay
resident; FFN neurons live on disk in a bundled (``[gate|up|down]`` per neuron)
or split (three neuron-major tensors) layout (:mod:`jaxparams.flash.bundle`)
and are brought in on demand:

* ``naive``: each layer's FFN is read whole when needed (kept if the budget holds
  every layer: with ``memory_budget=1.0`` this is the dense in-memory reference);
* ``predictor``: a low-rank predictor (or the ``oracle``: the true ``gate x > 0``,
  from dense gate weights held outside the budget, a correctness device) picks the
  neurons; with ``window=0`` they are loaded afresh for every token;
* ``window=k``: neurons predicted in the last ``k`` tokens stay in the
  :class:`~jaxparams.flash.neurons.NeuronMatrix`; only the increment is read.

Reads are ``os.preadv`` calls from threads (:class:`~jaxparams.flash.reads.ChunkReader`),
one per run of consecutive new neurons (bundled) or one per run and part (split).
The page cache is dropped before the run and, by default, after each token (the
budget leaves the kernel no room to keep the model's pages). The math is JAX
(``models``' RMSNorm, RoPE and grouped-query attention; the FFN is a jit-compiled
gather-free product over the loaded rows, compiled once per power-of-two bucket).

Example:
  >>> import os, tempfile
  >>> from jaxparams.demo.tiny_llama import llama_config, write_llama
  >>> d = tempfile.mkdtemp()
  >>> cfg = dict(llama_config(), hidden_act='relu')
  >>> src = write_llama(os.path.join(d, 'm'), cfg=cfg)
  >>> dense = FlashModel(src, FlashConfig(memory_budget=1.0, naive=True)).generate([1, 2], 3)
  >>> oracle = FlashModel(src, FlashConfig(memory_budget=0.9, oracle=True)).generate([1, 2], 3)
  >>> dense['tokens'] == oracle['tokens']
  True
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.flash.bundle import bundle, bundled_layers
from jaxparams.flash.neurons import NeuronMatrix, Window
from jaxparams.flash.predictor import LayerPredictor, load_predictors
from jaxparams.flash.reads import ChunkReader, aligned_empty
from jaxparams.io import open_checkpoint, parse_size, read_model_config
from jaxparams.models import LlamaConfig
from jaxparams.models.attention import gqa_attention
from jaxparams.models.layers import RMSNorm
from jaxparams.models.rope import apply_rotary, rope_cos_sin

__all__ = ["FlashConfig", "FlashModel", "prepare_layout", "rss_bytes"]

_IOV_MAX = 1024
_ACT = {"relu": jax.nn.relu, "silu": jax.nn.silu, "swish": jax.nn.silu}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlashConfig:
  """Runtime settings.

  Attributes:
    memory_budget: a fraction of the model's bytes (``<= 1``), bytes, or a size string
      (``'800MB'``).
    naive: read each layer's FFN whole (no predictor).
    oracle: the true active set (dense gate weights, outside the budget).
    window: keep neurons predicted in the last ``k`` tokens (``0``: reload every token).
    threads: reader threads.
    max_chunk_bytes: longest single read.
    drop_cache_every_token: ``posix_fadvise(DONTNEED)`` the model files after every token.
    max_seq: KV cache length.
    min_bucket: smallest FFN row bucket.
  """
  memory_budget: float | int | str = 0.5
  naive: bool = False
  oracle: bool = False
  window: int = 5
  threads: int = 8
  max_chunk_bytes: int = 1 << 22
  drop_cache_every_token: bool = True
  max_seq: int = 256
  min_bucket: int = 64


def rss_bytes() -> tuple[int, int]:
  """``(current, peak)`` resident set size of this process in bytes (``/proc/self/status``)."""
  cur = peak = 0
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          cur = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
          peak = int(line.split()[1]) * 1024
  except OSError:
    import resource  # pylint: disable=import-outside-toplevel
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return cur, peak


def prepare_layout(src: str | Path, out: str | Path, *, bundled: bool = True) -> Path:
  """``src`` itself when it already has the requested layout, else a rewritten copy in ``out``."""
  src = Path(src)
  with open_checkpoint(src) as r:
    names = r.names()
  have = ("bundled" if any(n.endswith(".mlp.bundle") for n in names) else
          "split" if any(n.endswith(".mlp.down_rows") for n in names) else "hf")
  want = "bundled" if bundled else "split"
  if have == want:
    return src
  if have != "hf":
    raise ValueError(f"{src}: holds the {have!r} layout; this run needs {want!r} "
                     "(unbundle it first, or drop/add --no-bundle)")
  bundle(src, out, layout=want)
  return Path(out)


def _rms(x, scale, eps):
  return RMSNorm(epsilon=eps).apply({"params": {"scale": scale}}, x)


def _attention_step(c: LlamaConfig):
  nh, nkv, hd, eps = c.num_attention_heads, c.num_key_value_heads, c.head_dim_, c.rms_norm_eps

  @jax.jit
  def step(x, p, kc, vc, pos):
    h = RMSNorm(epsilon=eps).apply({"params": {"scale": p["in_norm"]}}, x)
    lin = lambda name: h @ p[name] + (p[name + "_b"] if name + "_b" in p else 0)
    q = lin("q").reshape(1, 1, nh, hd)
    k = lin("k").reshape(1, 1, nkv, hd)
    v = lin("v").reshape(1, 1, nkv, hd)
    cos, sin = rope_cos_sin(pos.reshape(1, 1), head_dim=hd, theta=c.rope_theta,
                            scaling=c.rope_scaling_dict,
                            partial_rotary_factor=c.partial_rotary_factor,
                            max_position_embeddings=c.max_position_embeddings, dtype=x.dtype)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    kc = jax.lax.dynamic_update_slice(kc, k, (0, pos, 0, 0))
    vc = jax.lax.dynamic_update_slice(vc, v, (0, pos, 0, 0))
    mask = (jnp.arange(kc.shape[1]) <= pos)[None, None, :]
    out = gqa_attention(q, kc, vc, mask, scale=hd ** -0.5).reshape(1, -1)
    x = x + out @ p["o"] + (p["o_b"] if "o_b" in p else 0)
    h2 = RMSNorm(epsilon=eps).apply({"params": {"scale": p["post_norm"]}}, x)
    return x, h2, kc, vc
  return step


def _ffn_fn(act, hidden: int):
  """The FFN over loaded ``[gate | up | down]`` rows, as two matrix products over whole rows.

  ``rows @ [h on the gate block, h on the up block]`` gives the gate and up pre-activations
  in one pass, and ``a @ rows`` the output (its gate and up columns dropped after). Reading
  the down part twice and the gate/up parts once more than needed is cheaper on XLA:CPU
  than three matrix-vector products over column slices of ``rows`` (4.7x on a 16,384-row,
  hidden-1024 block here: 17.6 against 84 ms), which are not vectorized as well.
  """
  def ffn(h, rows, n):
    rows = rows.astype(h.dtype)
    w = jnp.zeros((3 * hidden, 2), h.dtype)
    w = w.at[:hidden, 0].set(h[0]).at[hidden:2 * hidden, 1].set(h[0])
    z = rows @ w
    a = act(z[:, 0]) * z[:, 1]
    a = jnp.where(jnp.arange(rows.shape[0]) < n, a, 0)
    return (a[None] @ rows)[:, 2 * hidden:]
  return jax.jit(ffn)


def _scores_fn():
  @jax.jit
  def scores(h, a, b, bias, thr):
    s = (h[0] @ a) @ b + bias
    return s > thr, s
  return scores


class FlashModel:
  """A Llama-family model whose FFNs stay on disk (see the module docstring).

  Args:
    path: an HF folder (rewritten into the needed layout in a temporary folder, removed on
      :meth:`close`), or a bundled / split folder from :func:`jaxparams.flash.bundle`.
    config: :class:`FlashConfig`.
    predictors: one :class:`LayerPredictor` per layer (required unless naive or oracle), or
      the folder written by :func:`jaxparams.flash.save_predictors` (read after the
      baseline RSS is taken, so that their bytes count once: in the budget).
    bundled: read the bundled layout (else the split one).
  """

  def __init__(self, path: str | Path, config: FlashConfig = FlashConfig(), *,
               predictors: Sequence[LayerPredictor] | str | Path | None = None,
               bundled: bool = True):
    self.cfg = config
    self._tmp = None
    path = Path(path)
    with open_checkpoint(path) as r:
      names = r.names()
    if not any(n.endswith((".mlp.bundle", ".mlp.down_rows")) for n in names):
      self._tmp = tempfile.TemporaryDirectory(prefix="flash-layout-")
    self.path = prepare_layout(path, Path(self._tmp.name) / "m" if self._tmp else path,
                               bundled=bundled)
    self.bundled = bundled
    cfg_json = read_model_config(self.path)  # the one strict config.json reader
    self.mc = LlamaConfig.from_hf_dict(cfg_json)
    c = self.mc
    if c.fused_projections or c.qk_norm or c.sliding_window or c.mlp_bias:
      raise ValueError(f"{path}: the flash runtime supports plain Llama (no fused projections, "
                       "qk_norm, sliding window or MLP bias)")
    if not (config.naive or config.oracle) and predictors is None:
      raise ValueError("FlashModel: predictors are required unless naive or oracle")
    if isinstance(predictors, (str, Path)):
      predictors = _PredictorFolder(Path(predictors))
    if predictors is not None and len(predictors) != c.num_hidden_layers:
      raise ValueError(f"FlashModel: {len(predictors)} predictors for {c.num_hidden_layers} layers")
    self.act = _ACT[c.hidden_act]
    self.H, self.I, self.L = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    self._open(predictors)

  # -- loading ---------------------------------------------------------------------------------
  def _open(self, predictors) -> None:
    """Sizes from the headers, programs compiled, baseline RSS, then the resident weights."""
    c, cfg = self.mc, self.cfg
    reader = open_checkpoint(self.path)
    try:
      self.model_bytes = reader.nbytes
      parts = []
      for i in range(self.L):
        pre = f"model.layers.{i}.mlp"
        layer_parts = ([f"{pre}.bundle"] if self.bundled else
                       [f"{pre}.gate_proj.weight", f"{pre}.up_proj.weight", f"{pre}.down_rows"])
        missing = [n for n in layer_parts if n not in reader]
        if missing:
          raise ValueError(f"{self.path}: missing FFN tensor(s) {missing}")
        parts.append([reader.spec(n) for n in layer_parts])
      self.ffn_bytes = sum(s.nbytes for p in parts for s in p)
      files = sorted({str(s.file) for p in parts for s in p})
      self._file_index = {f: i for i, f in enumerate(files)}
      self.parts = [[(self._file_index[str(s.file)], s.offset) for s in p] for p in parts]
      self.np_dtype = np.dtype(parts[0][0].dtype)
      self.itemsize = self.np_dtype.itemsize
      # The resident parameters: (key, checkpoint name, transpose) per layer, from headers.
      plan = []
      for i in range(self.L):
        a = f"model.layers.{i}.self_attn"
        lp = [("in_norm", f"model.layers.{i}.input_layernorm.weight", False),
              ("post_norm", f"model.layers.{i}.post_attention_layernorm.weight", False)]
        for k in "qkvo":
          lp.append((k, f"{a}.{k}_proj.weight", True))
          if f"{a}.{k}_proj.bias" in reader:
            lp.append((k + "_b", f"{a}.{k}_proj.bias", False))
        plan.append(lp)
      tied = c.tie_word_embeddings or "lm_head.weight" not in reader
      top = ["model.embed_tokens.weight", "model.norm.weight"] + ([] if tied else
                                                                   ["lm_head.weight"])
      rb = sum(reader.spec(n).nbytes for lp in plan for _, n, _ in lp)
      rb += sum(reader.spec(n).nbytes for n in top)
      if predictors is not None and not cfg.naive and not cfg.oracle:
        rb += sum(p.nbytes for p in predictors)
      # The KV cache is activation memory (like the activations of a dense run): reported,
      # not charged to the parameter budget.
      self.kv_bytes = self.L * 2 * cfg.max_seq * c.num_key_value_heads * c.head_dim_ * 4
      self.resident_bytes = rb
      self.budget_bytes = self._budget()
      allowance = self.budget_bytes - self.resident_bytes
      self.row_bytes = 3 * self.H * self.itemsize
      layer_bytes = self.I * self.row_bytes
      if allowance < (layer_bytes if cfg.naive else self.row_bytes * self.L):
        raise ValueError(f"memory budget {self.budget_bytes} bytes leaves {allowance} for the FFN "
                         f"after {self.resident_bytes} resident bytes; need at least "
                         f"{layer_bytes if cfg.naive else self.row_bytes * self.L}")
      if cfg.naive:
        self.keep_all = allowance >= self.L * layer_bytes
        self.capacity = self.I
      else:
        self.capacity = int(min(self.I, allowance // self.L // self.row_bytes))
      # Every program compiled ahead of time from shapes alone, before any weight is read:
      # the baseline RSS then holds python, jax and the compiled programs.
      shapes = {k: (tuple(reader.spec(n).shape[::-1]) if t else tuple(reader.spec(n).shape))
                for k, n, t in plan[0]}
      self._compile(shapes, None if tied else tuple(reader.spec("lm_head.weight").shape[::-1]),
                    predictors)
      self.base_rss = rss_bytes()[0]

      def get(name, transpose=False):
        a = np.asarray(reader.read(name), np.float32)
        return jnp.asarray(a.T if transpose else a)

      self.embed = np.asarray(reader.read("model.embed_tokens.weight"), np.float32)
      self.norm = get("model.norm.weight")
      self.head = jnp.asarray(self.embed.T) if tied else get("lm_head.weight", True)
      self.layers = [{k: get(n, t) for k, n, t in lp} for lp in plan]
      if cfg.oracle:  # correctness device: dense gates, outside the budget
        self.oracle_gates = []
        for i in range(self.L):
          if self.bundled:
            g = np.asarray(reader.read(f"model.layers.{i}.mlp.bundle"))[:, :self.H]
          else:
            g = np.asarray(reader.read(f"model.layers.{i}.mlp.gate_proj.weight"))
          self.oracle_gates.append(jnp.asarray(np.ascontiguousarray(g.T), jnp.float32))
          del g
    finally:
      reader.close()
    self.predictors = None
    if isinstance(predictors, _PredictorFolder):
      predictors = predictors.load()
    if predictors is not None and not cfg.naive and not cfg.oracle:
      self.predictors = [(jnp.asarray(p.a), jnp.asarray(p.b), jnp.asarray(p.bias),
                          jnp.float32(p.threshold)) for p in predictors]
    if cfg.naive:
      n_buf = self.L if self.keep_all else 1
      self.layer_buf = [aligned_empty((self.I, 3 * self.H), self.np_dtype) for _ in range(n_buf)]
      self.layer_loaded = [False] * self.L
      self.ffn_alloc_bytes = n_buf * layer_bytes
    else:
      self.matrices = [NeuronMatrix(capacity=self.capacity, num_neurons=self.I, row=3 * self.H,
                                    dtype=self.np_dtype) for _ in range(self.L)]
      self.windows = [Window(self.I, cfg.window) for _ in range(self.L)]
      self.ffn_alloc_bytes = self.L * self.capacity * self.row_bytes
    self.reader = ChunkReader(list(self._file_index), threads=cfg.threads)

  def _buckets(self) -> list[int]:
    if self.cfg.naive:
      return [self.I]
    out, b = [], self.cfg.min_bucket
    while True:
      out.append(min(b, self.capacity))
      if b >= self.capacity:
        return sorted(set(out))
      b *= 2

  def _compile(self, shapes: dict, head_shape, predictors) -> None:
    c, f32, S = self.mc, jnp.float32, jax.ShapeDtypeStruct
    x = S((1, self.H), f32)
    p = {k: S(v, f32) for k, v in shapes.items()}
    kc = S((1, self.cfg.max_seq, c.num_key_value_heads, c.head_dim_), f32)
    i32 = S((), jnp.int32)
    self._attn = _attention_step(c).lower(x, p, kc, kc, i32).compile()
    hs = head_shape or (self.H, c.vocab_size)
    eps = c.rms_norm_eps
    self._head = jax.jit(lambda x, n, w: _rms(x, n, eps) @ w).lower(
        x, S((self.H,), f32), S(hs, f32)).compile()
    ffn = _ffn_fn(self.act, self.H)
    self._ffn = {b: ffn.lower(x, S((b, 3 * self.H), self.np_dtype), i32).compile()
                 for b in self._buckets()}
    self._scores = None
    if predictors is not None and not self.cfg.naive and not self.cfg.oracle:
      r = predictors.rank if isinstance(predictors, _PredictorFolder) else predictors[0].a.shape[1]
      self._scores = _scores_fn().lower(x, S((self.H, r), f32), S((r, self.I), f32),
                                        S((self.I,), f32), S((), f32)).compile()

  def _budget(self) -> int:
    b = self.cfg.memory_budget
    if isinstance(b, str):
      b = float(b) if b.replace(".", "", 1).isdigit() else parse_size(b)
    if b <= 0:
      raise ValueError(f"memory_budget must be > 0, got {b}")
    return int(b * self.model_bytes) if b <= 1 else int(b)

  # -- I/O --------------------------------------------------------------------------------------
  def _requests(self, layer: int, ids: np.ndarray, rows: np.ndarray, dest: np.ndarray) -> list:
    """preadv requests bringing neurons ``ids`` (sorted) into ``dest[rows]``.

    One call per run of consecutive neurons (per part in the split layout), up to
    ``max_chunk_bytes`` and ``IOV_MAX`` buffers; within a call, one buffer per run of
    consecutive destination rows (bundled) or per row (split).
    """
    ids = np.asarray(ids, np.int64)
    rows = np.asarray(rows, np.int64)
    if ids.size == 0:
      return []
    h_bytes = self.H * self.itemsize
    flat = dest.reshape(dest.shape[0], -1).view(np.uint8)
    max_rows = max(1, self.cfg.max_chunk_bytes // self.row_bytes)
    step = np.diff(ids) != 1                        # a new run of neurons starts after i
    # Chunk limit: cut runs every max_rows neurons (counted from each run's start).
    run_id = np.concatenate([[0], np.cumsum(step)])
    run_start = np.flatnonzero(np.concatenate([[True], step]))
    in_run = np.arange(ids.size) - run_start[run_id]
    call_start = np.concatenate([[True], step]) | (in_run % max_rows == 0)
    reqs = []
    if self.bundled:
      f, off = self.parts[layer][0]
      seg_start = call_start | np.concatenate([[True], np.diff(rows) != 1])
      starts = np.flatnonzero(seg_start)
      lens = np.diff(np.concatenate([starts, [ids.size]]))
      new_call = call_start[starts]
      bufs: list = []
      for a, b, c in zip(starts.tolist(), lens.tolist(), new_call.tolist()):
        if c or len(bufs) == _IOV_MAX:
          if bufs:
            reqs.append((f, off + first * self.row_bytes, bufs))
          bufs, first = [], int(ids[a])
        r = int(rows[a])
        bufs.append(memoryview(flat[r:r + b]).cast("B"))
      reqs.append((f, off + first * self.row_bytes, bufs))
      return reqs
    starts = np.flatnonzero(call_start)
    ends = np.concatenate([starts[1:], [ids.size]])
    for a, e in zip(starts.tolist(), ends.tolist()):
      nid = int(ids[a])
      for p, (f, off) in enumerate(self.parts[layer]):
        for s3 in range(a, e, _IOV_MAX):
          rr = rows[s3:min(e, s3 + _IOV_MAX)].tolist()
          bufs = [memoryview(flat[r, p * h_bytes:(p + 1) * h_bytes]) for r in rr]
          reqs.append((f, off + (nid + s3 - a) * h_bytes, bufs))
    return reqs

  def _bucket(self, n: int, cap: int) -> int:
    b = self.cfg.min_bucket
    while b < n:
      b *= 2
    return min(b, cap)

  # -- one token ---------------------------------------------------------------------------------
  def _ffn_layer(self, i: int, h: jax.Array, t: int, stats: dict) -> jax.Array:
    cfg = self.cfg
    if cfg.naive:
      buf = self.layer_buf[i if self.keep_all else 0]
      if not (self.keep_all and self.layer_loaded[i]):
        t0 = time.perf_counter()
        reqs = self._requests(i, np.arange(self.I), np.arange(self.I), buf)
        stats["mem"] += time.perf_counter() - t0
        self.reader.read(reqs)
        self.layer_loaded[i] = True
      t0 = time.perf_counter()
      out = self._ffn[self.I](h, buf, np.int32(self.I)).block_until_ready()
      stats["compute"] += time.perf_counter() - t0
      stats["active"][i] += self.I
      return out
    t0 = time.perf_counter()
    if cfg.oracle:
      pre = h[0] @ self.oracle_gates[i]
      mask, score = np.asarray(pre > 0), np.asarray(pre)
    else:
      a, b, bias, thr = self.predictors[i]
      mask, score = (np.asarray(v) for v in self._scores(h, a, b, bias, thr))
    stats["compute"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    active = np.flatnonzero(mask)
    m, win = self.matrices[i], self.windows[i]
    if cfg.window == 0:  # everything is read afresh: nothing to keep, nothing to move
      m.remove(m.loaded().copy())
      old, new = np.zeros(0, np.int64), active
    else:
      keep = win.update(t, active)
      loaded = m.loaded()
      old = loaded[~keep[loaded]]
      new = active[m.pos[active] < 0]
      over = m.n - old.size + new.size - m.capacity
      if over > 0:  # over capacity: also drop the oldest kept neurons not needed now
        spare = loaded[keep[loaded] & ~mask[loaded]]
        spare = spare[np.argsort(win.last[spare], kind="stable")][:over]
        old = np.concatenate([old, spare])
    over = m.n - old.size + new.size - m.capacity
    if over > 0:  # the current set alone is too big: keep the best scores
      new = np.sort(new[np.argsort(-score[new], kind="stable")][:new.size - over])
      stats["dropped"] += over
    rows = m.replace(old, new)
    reqs = self._requests(i, new, rows, m.rows)
    stats["mem"] += time.perf_counter() - t0
    self.reader.read(reqs)
    t0 = time.perf_counter()
    bucket = self._bucket(m.n, m.capacity)
    out = self._ffn[bucket](h, m.rows[:bucket], np.int32(m.n)).block_until_ready()
    stats["compute"] += time.perf_counter() - t0
    stats["active"][i] += active.size
    stats["loaded"][i] += m.n
    return out

  def _step(self, token: int, pos: int, caches: list, stats: dict) -> jax.Array:
    t0 = time.perf_counter()
    x = jnp.asarray(self.embed[token][None])
    stats["compute"] += time.perf_counter() - t0
    for i, p in enumerate(self.layers):
      t0 = time.perf_counter()
      kc, vc = caches[i]
      x, h, kc, vc = self._attn(x, p, kc, vc, jnp.int32(pos))
      caches[i] = (kc, vc)
      h.block_until_ready()
      stats["compute"] += time.perf_counter() - t0
      x = x + self._ffn_layer(i, h, pos, stats)
    t0 = time.perf_counter()
    logits = self._head(x, self.norm, self.head)[0]
    logits.block_until_ready()
    stats["compute"] += time.perf_counter() - t0
    if self.cfg.drop_cache_every_token:
      t0 = time.perf_counter()
      self.reader.drop_cache()
      dt = time.perf_counter() - t0
      stats["mem"] += dt
      stats["drop"] += dt
    return logits

  def generate(self, prompt: Sequence[int], new_tokens: int, *,
               keep_logits: bool = False) -> dict[str, Any]:
    """Greedy decoding; returns the report (tokens, speed, bytes and calls per token, ...).

    Per-token numbers are over the ``new_tokens`` generated (the prompt's steps fill the
    window first, as in the paper's measurement).
    """
    prompt = [int(t) for t in prompt]
    if not prompt or new_tokens < 1:
      raise ValueError(f"generate: need a prompt and new_tokens >= 1, got {prompt}, {new_tokens}")
    if len(prompt) + new_tokens > self.cfg.max_seq:
      raise ValueError(f"generate: {len(prompt)} + {new_tokens} tokens exceed max_seq "
                       f"{self.cfg.max_seq}")
    bad = [t for t in prompt if not 0 <= t < self.mc.vocab_size]
    if bad:
      raise ValueError(f"generate: token ids {bad[:4]} outside the vocabulary "
                       f"[0, {self.mc.vocab_size})")
    c = self.mc
    kc = jnp.zeros((1, self.cfg.max_seq, c.num_key_value_heads, c.head_dim_), jnp.float32)
    caches = [(kc, kc) for _ in range(self.L)]
    self.reader.drop_cache()
    stats = _new_stats(self.L)
    logits_all = []
    for pos, tok in enumerate(prompt[:-1]):
      self._step(tok, pos, caches, stats)
    b0, c0 = self.reader.bytes, self.reader.calls
    io0 = self.reader.seconds
    stats = _new_stats(self.L)
    tokens = []
    tok, pos = prompt[-1], len(prompt) - 1
    t_start = time.perf_counter()
    for _ in range(new_tokens):
      logits = self._step(tok, pos, caches, stats)
      tok, pos = int(jnp.argmax(logits)), pos + 1
      tokens.append(tok)
      if keep_logits:
        logits_all.append(np.asarray(logits))
    wall = time.perf_counter() - t_start
    n = new_tokens
    nbytes, calls = self.reader.bytes - b0, self.reader.calls - c0
    io = self.reader.seconds - io0
    peak = rss_bytes()[1]
    report = {
        "tokens": tokens, "tokens_per_s": n / wall, "bytes_read_per_token": nbytes / n,
        "ffn_bytes": self.ffn_bytes, "read_calls_per_token": calls / n,
        "peak_rss_bytes": peak, "avg_chunk_bytes": nbytes / max(calls, 1),
        "bytes_read_fraction_of_ffn": nbytes / n / self.ffn_bytes,
        "io_s_per_token": io / n, "mem_s_per_token": stats["mem"] / n,
        "compute_s_per_token": stats["compute"] / n, "wall_s_per_token": wall / n,
        "cache_drop_s_per_token": stats["drop"] / n,  # part of mem_s_per_token
        "active_fraction_per_layer": [a / n / self.I for a in stats["active"]],
        "loaded_fraction_per_layer": ([v / n / self.I for v in stats["loaded"]]
                                      if not self.cfg.naive else [1.0] * self.L),
        "dropped_neurons_per_token": stats["dropped"] / n,
        "model_bytes": self.model_bytes, "budget_bytes": self.budget_bytes,
        "resident_bytes": self.resident_bytes, "kv_cache_bytes": self.kv_bytes, "ffn_allocated_bytes": self.ffn_alloc_bytes,
        "base_rss_bytes": self.base_rss, "layout": "bundled" if self.bundled else "split",
        "setting": dict(dataclasses.asdict(self.cfg), predictors=self.predictors is not None),
    }
    if keep_logits:
      report["logits"] = logits_all
    return report

  def close(self) -> None:
    self.reader.close()
    if self._tmp is not None:
      self._tmp.cleanup()
      self._tmp = None

  def __enter__(self) -> "FlashModel":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class _PredictorFolder:
  """Sizes of saved predictors from their headers; the arrays are read by :meth:`load`."""

  def __init__(self, path: Path):
    self.path = path
    with open_checkpoint(path) as r:
      names = r.names()
      self.n = len({k.split(".")[1] for k in names if k.startswith("layers.")})
      self.nbytes = sum(r.spec(k).nbytes for k in names)
      if "layers.0.a" not in names:
        raise ValueError(f"{path}: not a predictor checkpoint (no 'layers.0.a')")
      self.rank = r.spec("layers.0.a").shape[1]

  def __len__(self) -> int:
    return self.n

  def __iter__(self):
    yield _Bytes(self.nbytes)

  def load(self) -> list:
    return load_predictors(self.path)


@dataclasses.dataclass
class _Bytes:
  nbytes: int


def _new_stats(layers: int) -> dict:
  return {"mem": 0.0, "drop": 0.0, "compute": 0.0, "dropped": 0, "active": [0] * layers,
          "loaded": [0] * layers}
