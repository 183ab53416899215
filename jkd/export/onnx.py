"""A traced JAX function as an ONNX model: JAX's own trace (the jaxpr) written op for op with `onnx`.

`to_onnx(fn, example)` traces `fn(x) -> logits` (the model's variables closed over) with
`jax.make_jaxpr` and writes each of its equations as ONNX nodes (`onnx.helper`), folding every
equation whose inputs are all constants (the variables: e.g. a BatchNorm's `rsqrt(var + eps)`) into
an initializer computed by JAX itself. The graph is the one JAX traced, not one built by hand per
model; the primitives jkd's models and their inputs lower to are covered (`PRIMITIVES`), any other
stops with `Unsupported` naming it (persistence images' `scan`, for one).

Why this instead of a converter package (docs/export.md): jax2onnx pins orbax-checkpoint < 0.11.37
(jkd needs 0.12); jax2tf in jax >= 0.5 serialises StableHLO only (an `XlaCallModule` op, which
tf2onnx 1.17 cannot convert) and TensorFlow is a ~600 MB dependency; onnxscript writes ONNX from
Python functions written in its own op set, with no JAX frontend, so it would be this same walk
with more dependencies.

The batch dimension is dynamic: the trace uses a batch of `TRACE_BATCH` (a prime no dimension of
jkd's models is a multiple of), and a reshape's batch-sized entry becomes ONNX's 0 (copy) or -1.
Running the model and its int8 quantisation: `jkd.export.runtime`.
"""

from __future__ import annotations

import string
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

try:
  import onnx
  from onnx import TensorProto, helper, numpy_helper
except ImportError:   # the `export` extra; callers check `available()`
  onnx = None

OPSET = 18
TRACE_BATCH = 37
INPUT, OUTPUT = "windows", "logits"
EXTRA = "install the export extra: pip install 'jkd[export]' (onnx, onnxruntime)"


class Unsupported(ValueError):
  """The function uses a JAX primitive (or a form of one) this converter does not write."""


def available() -> bool:
  try:
    import onnxruntime  # noqa: F401
  except ImportError:
    return False
  return onnx is not None


_UNARY = {"neg": "Neg", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "tanh": "Tanh",
          "logistic": "Sigmoid", "abs": "Abs", "erf": "Erf", "sign": "Sign", "floor": "Floor",
          "ceil": "Ceil", "not": "Not", "copy": "Identity", "copy_p": "Identity",
          "reduce_precision": "Identity", "optimization_barrier": "Identity"}
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min",
           "pow": "Pow", "and": "And", "or": "Or", "eq": "Equal", "lt": "Less", "gt": "Greater",
           "le": "LessOrEqual", "ge": "GreaterOrEqual", "add_any": "Add"}
_REDUCE = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin"}
_CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "remat", "checkpoint", "custom_lin")
PRIMITIVES = sorted({*_UNARY, *_BINARY, *_REDUCE, *_CALLS, "rsqrt", "integer_pow", "square",
                     "ne", "select_n", "convert_element_type", "dot_general",
                     "conv_general_dilated", "reduce_window_max", "broadcast_in_dim", "reshape",
                     "squeeze", "expand_dims", "transpose", "concatenate", "stack", "pad",
                     "slice", "rev", "clamp", "stop_gradient"})


def _dtype(dtype) -> int:
  return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class _Writer:
  def __init__(self):
    self.nodes, self.inits, self.count = [], [], 0

  def name(self, hint: str = "t") -> str:
    self.count += 1
    return f"{hint}_{self.count}"

  def const(self, value, hint: str = "c") -> str:
    n = self.name(hint)
    self.inits.append(numpy_helper.from_array(np.asarray(value), n))
    return n

  def ints(self, values: Sequence[int]) -> str:
    return self.const(np.asarray(list(values), np.int64), "i")

  def node(self, op: str, inputs: Sequence[str], n_out: int = 1, **attrs) -> Any:
    outs = [self.name(op.lower()) for _ in range(n_out)]
    self.nodes.append(helper.make_node(op, list(inputs), outs, **attrs))
    return outs[0] if n_out == 1 else outs


def _batch_dependent(d: int) -> bool:
  return isinstance(d, int) and d >= TRACE_BATCH and d % TRACE_BATCH == 0


def _broadcast(x, shape, broadcast_dimensions, **_):
  expanded = np.reshape(x, [x.shape[broadcast_dimensions.index(i)] if i in broadcast_dimensions
                            else 1 for i in range(len(shape))])
  return np.broadcast_to(expanded, shape)


def _ufunc(f):
  return lambda *args, **_: f(*args)


_NUMPY = {**{k: _ufunc(f) for k, f in {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum,
    "min": np.minimum, "neg": np.negative, "sqrt": np.sqrt, "square": np.square,
    "rsqrt": lambda x: 1 / np.sqrt(x)}.items()},
          "integer_pow": lambda x, y: x ** y,
          "convert_element_type": lambda x, new_dtype, **_: x.astype(new_dtype),
          "reshape": lambda x, new_sizes, **_: np.reshape(x, new_sizes),
          "transpose": lambda x, permutation: np.transpose(x, permutation),
          "squeeze": lambda x, dimensions: np.squeeze(x, tuple(dimensions)),
          "broadcast_in_dim": _broadcast}


def _lazy_broadcast(x: np.ndarray, params: dict) -> np.ndarray:
  """A constant broadcast to a batch-sized shape, with 1 where the batch goes (the elementwise
  ops that consume it broadcast it over the actual batch)."""
  shape = [1 if _batch_dependent(d) else d for d in params["shape"]]
  return np.asarray(jax.lax.broadcast_in_dim(jnp.asarray(x), shape,
                                             params["broadcast_dimensions"]))


class _Converter:
  """Walks a jaxpr; `env` maps each variable to an ONNX value name or a numpy constant."""

  def __init__(self, w: _Writer):
    self.w = w

  # -- values ----------------------------------------------------------------------------------
  def read(self, env: dict, v) -> Any:
    if isinstance(v, jax.extend.core.Literal):
      return np.asarray(v.val, v.aval.dtype)
    return env[v]

  def name_of(self, value: Any) -> str:
    return self.w.const(value) if isinstance(value, np.ndarray) else value

  # -- the walk --------------------------------------------------------------------------------
  def run(self, jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list:
    env = {}
    for v, c in zip(jaxpr.constvars, consts):
      env[v] = np.asarray(c) if not isinstance(c, str) else c
    for v, a in zip(jaxpr.invars, args):
      env[v] = a
    for eqn in jaxpr.eqns:
      ins = [self.read(env, v) for v in eqn.invars]
      outs = self.eqn(eqn, ins)
      for v, o in zip(eqn.outvars, outs):
        env[v] = o
    return [self.read(env, v) for v in jaxpr.outvars]

  def eqn(self, eqn, ins: list) -> list:
    prim, params = eqn.primitive.name, eqn.params
    if prim in _CALLS:
      inner = next((p for k, p in params.items()
                    if k in ("jaxpr", "call_jaxpr", "fun_jaxpr")), None)
      if inner is None:
        raise Unsupported(f"the JAX call primitive {prim!r} has no inner jaxpr to convert")
      if isinstance(inner, jax.extend.core.ClosedJaxpr):
        return self.run(inner.jaxpr, inner.consts, ins[:len(inner.jaxpr.invars)])
      return self.run(inner, [], ins[:len(inner.invars)])
    if prim not in PRIMITIVES:
      raise Unsupported(f"the JAX primitive {prim!r} has no ONNX translation here")
    if all(isinstance(i, np.ndarray) for i in ins):          # constant folding
      if prim == "broadcast_in_dim" and any(map(_batch_dependent, params["shape"])):
        return [_lazy_broadcast(ins[0], params)]
      if prim in _NUMPY:                         # the common ones without a dispatch per op
        return [np.asarray(_NUMPY[prim](*ins, **params), eqn.outvars[0].aval.dtype)]
      out = eqn.primitive.bind(*[jnp.asarray(i) for i in ins], **params)
      outs = out if eqn.primitive.multiple_results else [out]
      return [np.asarray(o) for o in outs]
    shapes = [tuple(v.aval.shape) for v in eqn.invars]
    self.in_dtypes = [np.dtype(v.aval.dtype) for v in eqn.invars]
    out_aval = eqn.outvars[0].aval
    handler = getattr(self, "p_" + prim, None)
    if handler is None:
      return [self.simple(prim, ins, params, out_aval)]
    return [handler(ins, shapes, params, out_aval)]

  def simple(self, prim: str, ins: list, params: dict, out_aval) -> str:
    if prim == "max" and len(ins) == 2:          # max(x, 0): Relu, which onnxruntime fuses
      for x, zero in (ins, ins[::-1]):
        if (not isinstance(x, np.ndarray) and isinstance(zero, np.ndarray) and zero.size == 1
            and not zero.any()):
          return self.w.node("Relu", [x])
    w, names = self.w, [self.name_of(i) for i in ins]
    if prim in _UNARY:
      return w.node(_UNARY[prim], names[:1])
    if prim in _BINARY:
      return w.node(_BINARY[prim], names)
    if prim in _REDUCE:
      return w.node(_REDUCE[prim], [names[0], w.ints(params["axes"])], keepdims=0)
    raise Unsupported(f"the JAX primitive {prim!r} has no ONNX translation here")

  # -- elementwise -----------------------------------------------------------------------------
  def p_stop_gradient(self, ins, shapes, params, out):
    return self.w.node("Identity", [self.name_of(ins[0])])

  def p_rsqrt(self, ins, shapes, params, out):
    return self.w.node("Reciprocal", [self.w.node("Sqrt", [self.name_of(ins[0])])])

  def p_square(self, ins, shapes, params, out):
    x = self.name_of(ins[0])
    return self.w.node("Mul", [x, x])

  def p_integer_pow(self, ins, shapes, params, out):
    x = self.name_of(ins[0])
    return self.w.node("Pow", [x, self.w.const(np.asarray(params["y"], out.dtype))])

  def p_ne(self, ins, shapes, params, out):
    return self.w.node("Not", [self.w.node("Equal", [self.name_of(i) for i in ins])])

  def p_clamp(self, ins, shapes, params, out):
    lo, x, hi = (self.name_of(i) for i in ins)
    return self.w.node("Min", [self.w.node("Max", [x, lo]), hi])

  def p_select_n(self, ins, shapes, params, out):
    if len(ins) != 3:
      raise Unsupported("select_n with more than two cases has no ONNX translation here")
    pred = self.name_of(ins[0])
    if self.in_dtypes[0] != np.bool_:
      pred = self.w.node("Cast", [pred], to=TensorProto.BOOL)
    return self.w.node("Where", [pred, self.name_of(ins[2]), self.name_of(ins[1])])

  def p_convert_element_type(self, ins, shapes, params, out):
    return self.w.node("Cast", [self.name_of(ins[0])], to=_dtype(params["new_dtype"]))

  # -- shapes ----------------------------------------------------------------------------------
  def p_reshape(self, ins, shapes, params, out):
    new = list(params["new_sizes"])
    dep = [i for i, d in enumerate(new) if _batch_dependent(d)]
    if dep and dep[0] == 0 and new[0] == TRACE_BATCH and shapes[0] and shapes[0][0] == new[0]:
      new[0] = 0
      dep = dep[1:]
    if len(dep) > 1:
      raise Unsupported(f"a reshape to {tuple(params['new_sizes'])} mixes the batch into two "
                        "dimensions")
    for i in dep:
      new[i] = -1
    return self.w.node("Reshape", [self.name_of(ins[0]), self.w.ints(new)])

  def p_squeeze(self, ins, shapes, params, out):
    return self.w.node("Squeeze", [self.name_of(ins[0]), self.w.ints(params["dimensions"])])

  def p_expand_dims(self, ins, shapes, params, out):
    return self.w.node("Unsqueeze", [self.name_of(ins[0]), self.w.ints(params["dimensions"])])

  def p_transpose(self, ins, shapes, params, out):
    return self.w.node("Transpose", [self.name_of(ins[0])], perm=list(params["permutation"]))

  def p_broadcast_in_dim(self, ins, shapes, params, out):
    shape, dims = tuple(params["shape"]), tuple(params["broadcast_dimensions"])
    x, in_shape = self.name_of(ins[0]), shapes[0]
    missing = [i for i in range(len(shape)) if i not in dims]
    if missing:
      x = self.w.node("Unsqueeze", [x, self.w.ints(missing)])
    have = [1] * len(shape)
    for d, s in zip(dims, in_shape):
      have[d] = s
    # A batch-sized dimension the operand lacks stays 1: ONNX's consumers broadcast it.
    target = [1 if have[i] == shape[i] or _batch_dependent(shape[i]) else shape[i]
              for i in range(len(shape))]
    if all(t == 1 for t in target):
      return x
    return self.w.node("Expand", [x, self.w.ints(target)])

  def p_concatenate(self, ins, shapes, params, out):
    return self.w.node("Concat", [self.name_of(i) for i in ins], axis=int(params["dimension"]))

  def p_stack(self, ins, shapes, params, out):
    axis = int(params.get("axis", params.get("dimension", 0)))
    parts = [self.w.node("Unsqueeze", [self.name_of(i), self.w.ints([axis])]) for i in ins]
    return self.w.node("Concat", parts, axis=axis)

  def p_pad(self, ins, shapes, params, out):
    config = params["padding_config"]
    if any(i != 0 for _, _, i in config):
      raise Unsupported("a pad with interior padding has no ONNX translation here")
    x = self.name_of(ins[0])
    if any(lo < 0 or hi < 0 for lo, hi, _ in config):
      raise Unsupported("a pad with negative padding has no ONNX translation here")
    pads = [lo for lo, _, _ in config] + [hi for _, hi, _ in config]
    value = np.asarray(ins[1]).reshape(()) if isinstance(ins[1], np.ndarray) else None
    if value is None:
      raise Unsupported("a pad with a computed padding value has no ONNX translation here")
    return self.w.node("Pad", [x, self.w.ints(pads), self.w.const(value)], mode="constant")

  def p_slice(self, ins, shapes, params, out):
    start, limit = params["start_indices"], params["limit_indices"]
    strides = params["strides"] or (1,) * len(start)
    axes = [a for a in range(len(start))
            if not (start[a] == 0 and limit[a] == shapes[0][a] and strides[a] == 1)]
    if any(_batch_dependent(shapes[0][a]) for a in axes):
      raise Unsupported("a slice of the batch dimension has no ONNX translation here")
    if not axes:
      return self.w.node("Identity", [self.name_of(ins[0])])
    return self.w.node("Slice", [self.name_of(ins[0]), self.w.ints([start[a] for a in axes]),
                                 self.w.ints([limit[a] for a in axes]), self.w.ints(axes),
                                 self.w.ints([strides[a] for a in axes])])

  def p_rev(self, ins, shapes, params, out):
    axes = list(params["dimensions"])
    big = np.iinfo(np.int64).max
    return self.w.node("Slice", [self.name_of(ins[0]), self.w.ints([-1] * len(axes)),
                                 self.w.ints([-big] * len(axes)), self.w.ints(axes),
                                 self.w.ints([-1] * len(axes))])

  # -- contractions ----------------------------------------------------------------------------
  def p_dot_general(self, ins, shapes, params, out):
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    (ls, rs), (a, b) = shapes, (self.name_of(i) for i in ins)
    if not lb and not rb and list(lc) == [len(ls) - 1] and list(rc) == [0] and len(rs) == 2:
      return self.w.node("MatMul", [a, b])                   # (..., K) @ (K, N)
    letters = iter(string.ascii_letters)
    l_ax = [next(letters) for _ in ls]
    r_ax = [None] * len(rs)
    for i, j in zip(lc, rc):
      r_ax[j] = l_ax[i]
    for i, j in zip(lb, rb):
      r_ax[j] = l_ax[i]
    r_ax = [c or next(letters) for c in r_ax]
    out_ax = ([l_ax[i] for i in lb] + [l_ax[i] for i in range(len(ls)) if i not in (*lc, *lb)]
              + [r_ax[j] for j in range(len(rs)) if j not in (*rc, *rb)])
    eq = f"{''.join(l_ax)},{''.join(r_ax)}->{''.join(out_ax)}"
    return self.w.node("Einsum", [a, b], equation=eq)

  def _to_nc(self, x, spec) -> str:
    return self.w.node("Transpose", [x], perm=list(spec))

  def p_conv_general_dilated(self, ins, shapes, params, out):
    dn = params["dimension_numbers"]
    if any(d != 1 for d in params["lhs_dilation"]) or params["batch_group_count"] != 1:
      raise Unsupported("a transposed (input-dilated) or batch-grouped convolution has no ONNX "
                        "translation here")
    pads = params["padding"]
    if any(lo < 0 or hi < 0 for lo, hi in pads):
      raise Unsupported("a convolution with negative padding has no ONNX translation here")
    x = self._to_nc(self.name_of(ins[0]), dn.lhs_spec)
    kernel = ins[1]
    if isinstance(kernel, np.ndarray):
      kernel = self.w.const(np.ascontiguousarray(np.transpose(kernel, dn.rhs_spec)), "kernel")
    else:
      kernel = self._to_nc(kernel, dn.rhs_spec)
    y = self.w.node("Conv", [x, kernel], strides=list(params["window_strides"]),
                    pads=[lo for lo, _ in pads] + [hi for _, hi in pads],
                    dilations=list(params["rhs_dilation"]),
                    group=int(params["feature_group_count"]),
                    kernel_shape=list(shapes[1][d] for d in dn.rhs_spec[2:]))
    return self.w.node("Transpose", [y], perm=list(np.argsort(dn.out_spec)))

  def p_reduce_window_max(self, ins, shapes, params, out):
    window, strides = params["window_dimensions"], params["window_strides"]
    pads = params["padding"]
    n = len(window)
    if window[0] != 1 or window[-1] != 1 or strides[0] != 1 or strides[-1] != 1 or any(
        d != 1 for d in (*params["base_dilation"], *params["window_dilation"])):
      raise Unsupported("a max pool over the batch or channels, or dilated, has no ONNX "
                        "translation here")
    to_nc = [0, n - 1, *range(1, n - 1)]
    y = self.w.node("MaxPool", [self._to_nc(self.name_of(ins[0]), to_nc)],
                    kernel_shape=list(window[1:-1]), strides=list(strides[1:-1]),
                    pads=[lo for lo, _ in pads[1:-1]] + [hi for _, hi in pads[1:-1]])
    return self.w.node("Transpose", [y], perm=list(np.argsort(to_nc)))


def to_onnx(fn: Callable, example: np.ndarray, doc: str = "") -> "onnx.ModelProto":
  """`fn(x (B, *window)) -> (B, K)` float32 as an ONNX model with input `windows` and output
  `logits`, the batch dimension dynamic. Raises `Unsupported` for what it cannot express."""
  if onnx is None:
    raise ImportError(EXTRA)
  from jkd.export import plain_xla
  x = jnp.zeros((TRACE_BATCH, *example.shape[1:]), jnp.float32)
  with plain_xla():              # XLA's own convolutions, not the AVX-512 kernel's custom call
    closed = jax.make_jaxpr(fn)(x)
  out_aval = closed.jaxpr.outvars[0].aval
  w = _Writer()
  conv = _Converter(w)
  (y,) = conv.run(closed.jaxpr, closed.consts, [INPUT])
  if isinstance(y, np.ndarray):
    raise Unsupported("the output does not depend on the input")
  w.nodes.append(helper.make_node("Identity", [y], [OUTPUT]))
  graph = helper.make_graph(
      w.nodes, "jkd", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT,
                                                     ["batch", *example.shape[1:]])],
      [helper.make_tensor_value_info(OUTPUT, _dtype(out_aval.dtype),
                                     ["batch", *out_aval.shape[1:]])], w.inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                            producer_name="jkd", doc_string=doc)
  model.ir_version = min(model.ir_version, 10)
  onnx.checker.check_model(model)
  return model
