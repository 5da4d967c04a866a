"""Forward and inverse 8x8 2-D DCT, bit-exact with ``actpack.codec.reference.dct2``/``idct2``.

Both transforms are separable integer matrix products with the same structure::

    pass 1       t[r] = round_shift(A @ x[r], shift_1)        one input row a cycle
    transpose    rows of t in, columns of t out
    pass 2       y[:, j] = clamp(round_shift(B @ t[:, j], shift_2))  one column a cycle
    transpose    columns of y in, rows of y out

with ``round_shift(x, s) = (x + 2**(s - 1)) >> s`` (round half up, arithmetic shift). For the
forward DCT ``A = B = K`` (``tables.DCT_MATRIX``): ``t = p @ K.T`` then ``Y = K @ t``. For the
inverse ``A = B = K.T``: ``t = y @ K`` then ``p = K.T @ t``, clamped to +-``spec.SFPR_MAX``.

No multipliers: each pass is a fixed linear network of two-input adders on shifted operands
(``_Net``), built at elaboration from the matrix: even/odd butterflies wherever the matrix has
the DCT's symmetry (``K[u, 7 - x] = (-1)**u K[u, x]``), then per input the shared shift-add
multiples of its constants, then the output sums. Every node is an exact integer linear form of
the inputs; ``_Net.matrix`` evaluates those forms on the unit vectors and the class checks the
result equals ``A`` (and ``B``) entry for entry, which for a linear integer network with no
rounding inside and no overflow (every width comes from the worst case) proves it equal to the
reference's matrix product for every input. Rounding happens where the reference rounds, on the
exact sums. One adder level per register stage.

Every intermediate width is derived from the matrix and the input shape at elaboration time
(worst case over all inputs the port can carry), so no value ever wraps.
"""

import functools

import numpy as np
from amaranth.hdl import Module, Mux, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from actpack.codec import spec
from actpack.codec.tables import DCT_MATRIX, ZIGZAG

__all__ = ["COEF", "DCT2D", "IDCT2D", "ORDERS", "PIXEL", "CoefRow", "PixelRow", "block_order"]

N = spec.BLOCK  # 8 values per row, 8 rows per block

# Pixels are the SFPR int8 values (+-127 by construction; -128 is accepted and transformed too).
PIXEL = Shape.cast(range(-spec.SFPR_MAX, spec.SFPR_MAX + 1))  # signed(8)
# Coefficients: 12-bit signed, the decoder's saturation range +-DCT_COEF_MAX.
COEF = Shape.cast(range(-spec.DCT_COEF_MAX, spec.DCT_COEF_MAX + 1))  # signed(12)

PixelRow = data.ArrayLayout(PIXEL, N)
CoefRow = data.ArrayLayout(COEF, N)

# Orders of a block's 64 values on a stream of rows: output row ``k``, lane ``i`` carries the
# value at row-major position ``ORDERS[name][8 k + i]``. "raster": rows of the block; "zigzag":
# the JPEG scan rows the block coder takes (``tables.ZIGZAG``).
ORDERS = {"raster": tuple(range(N * N)), "zigzag": tuple(int(p) for p in ZIGZAG)}


def block_order(order: str) -> tuple[int, ...]:
    """``ORDERS[order]``; a ``ValueError`` naming ``order`` for anything else."""
    if order not in ORDERS:
        raise ValueError(f"order: expected one of {sorted(ORDERS)}, not {order!r}")
    return ORDERS[order]

_MAX_SHIFT = 14  # shifts tried when building a constant from others (constants < 2**12)


def _shape_range(shape: Shape) -> tuple[int, int]:
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


def _matvec_range(matrix: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """Range of ``sum_i matrix[j, i] * x_i`` over all ``x_i`` in [lo, hi] and all ``j``."""
    m = np.asarray(matrix, dtype=object)
    los = [sum(min(c * lo, c * hi) for c in row) for row in m]
    his = [sum(max(c * lo, c * hi) for c in row) for row in m]
    return min(los), max(his)


def _round_shift_range(lo: int, hi: int, s: int) -> tuple[int, int]:
    h = 1 << (s - 1)
    return (lo + h) >> s, (hi + h) >> s


def _fit(lo: int, hi: int) -> Shape:
    return Shape.cast(range(lo, hi + 1))


# ----------------------------------------------------------------------------- linear networks

def _csd_weight(c: int) -> int:
    """Nonzero digits of ``c``'s canonical signed-digit form (adders to build it alone + 1)."""
    w = 0
    while c:
        if c & 1:
            c -= 2 - (c & 3)  # digit +1 (c = 1 mod 4) or -1 (c = 3 mod 4)
            w += 1
        c >>= 1
    return w


def _odd(c: int) -> tuple[int, int]:
    k = (c & -c).bit_length() - 1
    return c >> k, k


def _one_step(o: int, have: set[int]) -> tuple[int, int, int, int, bool] | None:
    """A way to make odd ``o`` with one adder from the odd fundamentals in ``have``:
    ``(fa, sa, fb, sb, sub)`` meaning ``o = (fa << sa) +- (fb << sb)``, or None."""
    for fa in sorted(have):
        for s in range(1, _MAX_SHIFT):
            if (fb := o - (fa << s)) > 0 and fb in have:
                return fa, s, fb, 0, False  # o = fa << s + fb
            if (fb := (fa << s) - o) > 0 and fb in have:
                return fa, s, fb, 0, True  # o = fa << s - fb
            if (fb := o + (fa << s)) in have:
                return fb, 0, fa, s, True  # o = fb - fa << s
    return None


def _csd_prefixes(o: int) -> list[int]:
    """Odd parts of the prefixes of ``o``'s CSD form, most significant digits first."""
    digits, c, k = [], o, 0
    while c:
        if c & 1:
            d = 2 - (c & 3)
            digits.append((d, k))
            c -= d
        c >>= 1
        k += 1
    out, v = [], 0
    for d, k in reversed(digits):
        v += d << k
        out.append(_odd(v)[0])
    return out


@functools.cache
def _mcm_plan(constants: tuple[int, ...]) -> tuple[tuple[int, int, int, int, int, bool], ...]:
    """Shift-add recipe making every constant's odd part from the input (fundamental 1):
    a list of ``(new, fa, sa, fb, sb, sub)``, ``new = (fa << sa) +- (fb << sb)``. Greedy: a
    target one adder away first; else the intermediate that puts the most targets one adder
    away; else the longest reachable prefix of a target's CSD form (always progresses)."""
    have = {1}
    plan = []
    todo = sorted({_odd(c)[0] for c in constants} - {1}, key=lambda c: (_csd_weight(c), c))

    def make(o):
        plan.append((o, *_one_step(o, have)))
        have.add(o)

    while todo:
        ready = [o for o in todo if _one_step(o, have) is not None]
        if ready:
            make(ready[0])
            todo.remove(ready[0])
            continue
        cands = set()
        for fa in have:
            for fb in have:
                for s in range(1, _MAX_SHIFT):
                    for g in (fa + (fb << s), (fb << s) - fa, fa - (fb << s)):
                        if 0 < g < 1 << _MAX_SHIFT and g & 1 and g not in have:
                            cands.add(g)
        best = max(sorted(cands), default=None,
                   key=lambda g: sum(_one_step(o, have | {g}) is not None for o in todo))
        if best is not None and any(_one_step(o, have | {best}) is not None for o in todo):
            make(best)
            continue
        pref = [p for p in _csd_prefixes(todo[0])[:-1]
                if p not in have and _one_step(p, have) is not None]
        make(pref[-1])
    return tuple(plan)


class _Net:
    """A linear integer network: ``n_in`` inputs and two-operand nodes
    ``(v[a] << sa) +- (v[b] << sb)``. A term is ``(node, shift, sign)`` = ``sign * v[node] <<
    shift``. ``forms[k]`` is node ``k`` as integer coefficients of the inputs."""

    def __init__(self, n_in: int):
        self.n_in = n_in
        self.forms: list[tuple[int, ...]] = [
            tuple(int(i == k) for i in range(n_in)) for k in range(n_in)]
        self.ops: list[tuple[int, int, int, int, bool] | None] = [None] * n_in
        self.level = [0] * n_in
        self._cache: dict = {}

    def node(self, a: int, sa: int, b: int, sb: int, sub: bool) -> int:
        key = (a, sa, b, sb, sub)
        if key not in self._cache:
            sign = -1 if sub else 1
            self.forms.append(tuple((x << sa) + sign * (y << sb)
                                    for x, y in zip(self.forms[a], self.forms[b], strict=True)))
            self.ops.append(key)
            self.level.append(1 + max(self.level[a], self.level[b]))
            self._cache[key] = len(self.forms) - 1
        return self._cache[key]

    def combine(self, p, q, sub: bool = False):
        """The term ``p + q`` (``p - q`` with ``sub``)."""
        (a, sa, ga), (b, sb, gb) = p, q
        gb = -gb if sub else gb
        s = min(sa, sb)
        sa, sb = sa - s, sb - s
        if ga == gb:
            return self.node(a, sa, b, sb, False), s, ga
        if ga > 0:
            return self.node(a, sa, b, sb, True), s, 1
        return self.node(b, sb, a, sa, True), s, 1

    def total(self, terms):
        """The sum of ``terms`` as one term: earliest operands first (shallowest tree)."""
        terms = list(terms)
        while len(terms) > 1:
            terms.sort(key=lambda t: self.level[t[0]])
            p, q = terms.pop(0), terms.pop(0)
            terms.append(self.combine(p, q))
        return terms[0]

    def multiples(self, term, constants):
        """``{c: term * c}`` for positive ``constants``, sharing the shift-add fundamentals."""
        node, shift, sign = term
        fund = {1: node}
        for o, fa, sa, fb, sb, sub in _mcm_plan(tuple(sorted(set(constants)))):
            fund[o] = self.node(fund[fa], sa, fund[fb], sb, sub)
        out = {}
        for c in constants:
            o, k = _odd(c)
            out[c] = (fund[o], shift + k, sign)
        return out

    def matvec(self, m: np.ndarray, xs: list) -> list:
        """Terms ``sum_i m[j, i] * xs[i]`` for each row ``j`` of the integer matrix ``m``."""
        rows, cols = m.shape
        if cols % 2 == 0 and cols >= 2:
            half = cols // 2
            flip = m[:, ::-1]
            sym = [j for j in range(rows) if (flip[j] == m[j]).all()]
            anti = [j for j in range(rows) if j not in sym and (flip[j] == -m[j]).all()]
            if len(sym) + len(anti) == rows and sym and anti:
                # input butterfly: x_i +- x_(n-1-i)
                a = [self.combine(xs[i], xs[cols - 1 - i]) for i in range(half)]
                b = [self.combine(xs[i], xs[cols - 1 - i], sub=True) for i in range(half)]
                ys = self.matvec(m[sym, :half], a)
                zs = self.matvec(m[anti, :half], b)
                out = [None] * rows
                for j, y in zip(sym, ys, strict=True):
                    out[j] = y
                for j, z in zip(anti, zs, strict=True):
                    out[j] = z
                return out
        if rows % 2 == 0 and rows >= 2:
            half = rows // 2
            flip = m[::-1, :]
            sym = [i for i in range(cols) if (flip[:, i] == m[:, i]).all()]
            anti = [i for i in range(cols) if i not in sym and (flip[:, i] == -m[:, i]).all()]
            if len(sym) + len(anti) == cols and sym and anti:
                # output butterfly: y_j = E_j + O_j, y_(n-1-j) = E_j - O_j
                es = self.matvec(m[:half, sym], [xs[i] for i in sym])
                os_ = self.matvec(m[:half, anti], [xs[i] for i in anti])
                out = [None] * rows
                for j in range(half):
                    out[j] = self.combine(es[j], os_[j])
                    out[rows - 1 - j] = self.combine(es[j], os_[j], sub=True)
                return out
        # direct: shared multiples of each input, then the sums
        prods = [self.multiples(xs[i], [abs(int(c)) for c in m[:, i] if c]) for i in range(cols)]
        out = []
        for j in range(rows):
            terms = []
            for i in range(cols):
                c = int(m[j, i])
                if c:
                    node, shift, sign = prods[i][abs(c)]
                    terms.append((node, shift, sign if c > 0 else -sign))
            out.append(self.total(terms))
        return out

    def value(self, term, inputs):
        """Evaluate a term on integer ``inputs`` (Python ints, exact)."""
        node, shift, sign = term
        return sign * (sum(c * x for c, x in zip(self.forms[node], inputs, strict=True)) << shift)

    def matrix(self, outs) -> np.ndarray:
        """The network's matrix: each output term evaluated on the unit vectors."""
        return np.array([[self.value(t, [int(i == k) for i in range(self.n_in)])
                          for k in range(self.n_in)] for t in outs], dtype=object)


@functools.cache
def _network(matrix_bytes: bytes) -> tuple[_Net, list]:
    m = np.frombuffer(matrix_bytes, dtype=np.int64).reshape(N, N)
    net = _Net(N)
    outs = net.matvec(m, [(k, 0, 1) for k in range(N)])
    # outputs must come out positive (no negation node): true for the DCT matrices
    if any(sign < 0 for _, _, sign in outs):
        raise AssertionError("an output of the network is negated")
    if not (net.matrix(outs) == m.astype(object)).all():  # the exactness proof, see the docstring
        raise AssertionError("the shift-add network does not compute the matrix")
    return net, outs


def _pass_network(matrix) -> tuple[_Net, list]:
    return _network(np.ascontiguousarray(np.asarray(matrix, dtype=np.int64)).tobytes())


class _Stage:
    """Registers of a pipeline that advances on ``en`` (one global stall)."""

    def __init__(self, m: Module, en, prefix: str):
        self.m, self.en, self.prefix = m, en, prefix

    def reg(self, value, shape, name: str):
        r = Signal(shape, name=f"{self.prefix}_{name}")
        with self.m.If(self.en):
            self.m.d.sync += r.eq(value)
        return r


def _build_pass(stage: _Stage, net: _Net, outs: list, inputs: list, lo: int, hi: int,
                shift: int, clamp: int | None, out_shape: Shape, levels: int = 1):
    """Registers computing ``clamp(round_shift(net(inputs), shift))``: ``levels`` adder levels
    a stage, then the rounding increment, then (with ``clamp``) the saturation. ``inputs`` are
    stage-0 registers holding values in [lo, hi]. Returns the output values (registers, or
    wiring from registers) and the number of stages."""
    rng = [(sum(min(c * lo, c * hi) for c in f), sum(max(c * lo, c * hi) for c in f))
           for f in net.forms]
    held: dict[tuple[int, int], Signal] = {(k, 0): x for k, x in enumerate(inputs)}
    home = [-(-lv // levels) for lv in net.level]  # the stage computing each node

    def comb(k: int):
        a, sa, b, sb, sub = net.ops[k]
        va = (comb(a) if home[a] == home[k] else at(a, home[k] - 1)) << sa
        vb = (comb(b) if home[b] == home[k] else at(b, home[k] - 1)) << sb
        return va - vb if sub else va + vb

    def at(k: int, s: int):
        """Node ``k``'s register at the end of stage ``s`` (delayed copies made on demand,
        shared)."""
        if (k, s) not in held:
            src = at(k, s - 1) if s > home[k] else comb(k)
            held[(k, s)] = stage.reg(src, _fit(*rng[k]), f"n{k}_s{s}")
        return held[(k, s)]

    depth = max(home[k] for k, _, _ in outs)
    result = []
    for j, (k, sh, sign) in enumerate(outs):
        assert sign > 0
        s = at(k, depth)
        s_lo, s_hi = rng[k][0] << sh, rng[k][1] << sh
        # round half up: (S + 2**(shift-1)) >> shift == ((S >> (shift-1)) + 1) >> 1, exactly;
        # the increment is on the high bits only (the low ones are shifted out first)
        h_lo, h_hi = s_lo >> (shift - 1), s_hi >> (shift - 1)
        h = stage.reg(((s << sh) >> (shift - 1)) + 1, _fit(h_lo + 1, h_hi + 1), f"h{j}")
        y = h >> 1
        if clamp is not None:
            y = stage.reg(Mux(y > clamp, clamp, Mux(y < -clamp, -clamp, y)), out_shape, f"c{j}")
        result.append(y)
    return result, depth + 1 + (clamp is not None)


def _transpose(m: Module, en, valid, values: list, shape: Shape, prefix: str,
               cell=lambda k, lane: (lane, k)):
    """Vectors of a block in (``valid``, 8 ``values``), 8 vectors out, one a cycle: lane
    ``lane`` of output ``k`` is lane ``j`` of input ``r``, ``(r, j) = cell(k, lane)`` (default:
    rows in, columns out).

    ``A`` fills by shifting rows in; when it holds a whole block it is copied to ``B`` (if ``B``
    is empty or sends its last output this cycle) and fills again from the next row at once.
    The copy wires cell ``(k, lane)`` to ``B[k][lane]``, so ``B`` holds the block in output
    order (any ``cell`` map costs the same) and shifts by one output a step; the output
    registers load ``B[0]``. No 8:1 select and no decoded output index fans out to every lane
    (the critical path of both engines when ``B`` sent through a select driven by its
    counter), for a 2:1 select on each cell of ``B`` (copy or shift; ``copy`` a register).
    In a pipeline stepped by one enable, ``B`` sends an output every step and ``A`` takes at
    most a row, so ``A`` is never full when ``B`` still has two outputs to send: no handshake
    is needed inside. Returns (valid, output registers)."""
    a = [[Signal(shape, name=f"{prefix}_a{r}_{j}") for j in range(N)] for r in range(N)]
    b = [[Signal(shape, name=f"{prefix}_b{r}_{j}") for j in range(N)] for r in range(N)]
    count = Signal(range(N + 1), name=f"{prefix}_count")
    left = Signal(range(N + 1), name=f"{prefix}_left")
    o_valid = Signal(name=f"{prefix}_valid")
    o_col = [Signal(shape, name=f"{prefix}_col{r}") for r in range(N)]
    # A full as B sends its last output (or is empty), a register of its own: it fans out
    copy = Signal(name=f"{prefix}_copy")
    busy = Signal(name=f"{prefix}_busy")  # left != 0: B sends an output this step
    with m.If(en):
        with m.If(valid):
            for r in range(N - 1):
                m.d.sync += [a[r][j].eq(a[r + 1][j]) for j in range(N)]
            m.d.sync += [a[N - 1][j].eq(values[j]) for j in range(N)]
        new_count = Mux(copy, 0, count) + valid
        new_left = Mux(copy, N, Mux(left == 0, 0, left - 1))
        m.d.sync += [count.eq(new_count), left.eq(new_left),
                     copy.eq((new_count == N) & (new_left <= 1)), busy.eq(new_left != 0)]
        with m.If(copy):
            m.d.sync += [b[k][lane].eq(a[r][j]) for k in range(N) for lane in range(N)
                         for r, j in [cell(k, lane)]]
        with m.Elif(busy):
            m.d.sync += [b[k][lane].eq(b[k + 1][lane])
                         for k in range(N - 1) for lane in range(N)]
        m.d.sync += o_valid.eq(busy)
        with m.If(busy):
            m.d.sync += [o_col[lane].eq(b[0][lane]) for lane in range(N)]
    return o_valid, o_col


class _Separable2D(wiring.Component):
    """Shared implementation; see ``DCT2D`` for the contract. Subclasses set the class constants
    and annotate ``i`` (rows of ``in_shape``) and ``o`` (rows of ``out_shape``)."""

    ROW_MATRIX: np.ndarray  # A: t[r, j] = sum_i A[j, i] * x[r, i]
    COL_MATRIX: np.ndarray  # B: y[k, j] = sum_r B[k, r] * t[r, j]
    SHIFT_1: int
    SHIFT_2: int
    CLAMP: int | None
    LATENCY: int
    #: the coefficients are the output (forward) or the input (inverse): ``order`` is theirs
    COEF_OUT: bool
    #: adder levels between two registers (one: a carry chain and its routing a stage)
    LEVELS = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.LATENCY = cls._latency()

    @classmethod
    def _latency(cls) -> int:
        """Cycles from a row's transfer on ``i`` to the transfer of the output row with the
        same index (unstalled): the input register, pass 1 (``d1`` stages), the first transpose
        (``N + 2``: the block's other 7 rows, the copy flag, the copy into ``B``, ``B``'s first
        output into the output registers), pass 2 (``d2``), the second transpose likewise, the
        output register."""
        def stages(matrix):
            net, outs = _pass_network(matrix)
            return -(-max(net.level[k] for k, _, _ in outs) // cls.LEVELS) + 1

        d1 = stages(cls.ROW_MATRIX)
        d2 = stages(cls.COL_MATRIX) + (cls.CLAMP is not None)
        return 1 + d1 + (N + 2) + d2 + (N + 2) + 1

    def __init__(self, *, order: str = "raster"):
        self.order = block_order(order)
        # coefficient rows in another order on the input go through a reorder buffer first
        self._reorder_in = not self.COEF_OUT and self.order != ORDERS["raster"]
        if self._reorder_in:
            self.LATENCY = type(self).LATENCY + N + 2
        super().__init__()
        shapes = self.intermediate_shapes()
        self._row_sum_shape, self._t_shape, self._col_sum_shape, self._y_shape = (
            shapes["row_sum"], shapes["t"], shapes["col_sum"], shapes["y"])

    @classmethod
    def intermediate_shapes(cls) -> dict[str, Shape]:
        """Register shapes, sized for the worst case over every input the port can carry:
        ``row_sum`` (row pass before the shift), ``t`` (transpose buffer), ``col_sum`` (column
        pass before the shift), ``y`` (the output transpose)."""
        ports = next(k.__annotations__ for k in cls.__mro__ if "i" in vars(k).get(
            "__annotations__", {}))
        in_shape = ports["i"].signature.members["payload"].shape.elem_shape
        out_shape = ports["o"].signature.members["payload"].shape.elem_shape
        a = np.asarray(cls.ROW_MATRIX, dtype=np.int64)
        b = np.asarray(cls.COL_MATRIX, dtype=np.int64)
        if a.shape != (N, N) or b.shape != (N, N):
            raise ValueError(f"matrices must be {N}x{N}, got {a.shape} and {b.shape}")
        lo, hi = _shape_range(in_shape)
        s_lo, s_hi = _matvec_range(a, lo, hi)
        t_lo, t_hi = _round_shift_range(s_lo, s_hi, cls.SHIFT_1)
        c_lo, c_hi = _matvec_range(b, t_lo, t_hi)
        o_lo, o_hi = _round_shift_range(c_lo, c_hi, cls.SHIFT_2)
        if cls.CLAMP is not None:
            o_lo, o_hi = max(o_lo, -cls.CLAMP), min(o_hi, cls.CLAMP)
        out_lo, out_hi = _shape_range(out_shape)
        if o_lo < out_lo or o_hi > out_hi:  # a design error, not a user error
            raise AssertionError(f"output range [{o_lo}, {o_hi}] does not fit {out_shape}")
        return {"row_sum": _fit(s_lo, s_hi), "t": _fit(t_lo, t_hi), "col_sum": _fit(c_lo, c_hi),
                "y": _fit(o_lo, o_hi)}

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o

        # One stall for everything: ``en`` is a register (the output skid buffer is empty), so
        # its fan-out to every stage's clock enable starts at a flip-flop, and ``i.ready`` and
        # ``o.valid`` depend on registers only.
        skid_valid = Signal()
        skid = Signal.like(o.payload)
        en = Signal()
        m.d.comb += [en.eq(~skid_valid), i.ready.eq(en)]
        st = _Stage(m, en, "p1")

        in_lo, in_hi = _shape_range(i.payload.shape().elem_shape)
        x = [st.reg(i.payload[j], i.payload.shape().elem_shape, f"x{j}") for j in range(N)]
        v = st.reg(i.valid, 1, "v0")
        if self._reorder_in:  # input row r, lane j: position order[8 r + j]; raster rows out
            slot = {p: k for k, p in enumerate(self.order)}
            v, x = _transpose(m, en, v, x, i.payload.shape().elem_shape, "tr0",
                              cell=lambda k, lane: divmod(slot[N * k + lane], N))
        net1, outs1 = _pass_network(self.ROW_MATRIX)
        t_row, d1 = _build_pass(st, net1, outs1, x, in_lo, in_hi, self.SHIFT_1, None,
                                self._t_shape, self.LEVELS)
        for s in range(d1):
            v = st.reg(v, 1, f"v{s + 1}")

        v, t_col = _transpose(m, en, v, t_row, self._t_shape, "tr1")

        st2 = _Stage(m, en, "p2")
        t_lo, t_hi = _shape_range(self._t_shape)
        net2, outs2 = _pass_network(self.COL_MATRIX)
        y_col, d2 = _build_pass(st2, net2, outs2, t_col, t_lo, t_hi, self.SHIFT_2, self.CLAMP,
                                self._y_shape, self.LEVELS)
        for s in range(d2):
            v = st2.reg(v, 1, f"v{s + 1}")

        # pass 2 sends column u (lane v: the value at 8 v + u) as the buffer's input u; the
        # output order is only where each lane reads from, so it costs nothing here
        out_order = self.order if self.COEF_OUT else ORDERS["raster"]
        v, y_row = _transpose(m, en, v, y_col, self._y_shape, "tr2",
                              cell=lambda k, lane: divmod(out_order[N * k + lane], N)[::-1])

        # output register and skid buffer: o.ready only steers these two
        with m.If(~o.valid | o.ready):
            with m.If(skid_valid):
                m.d.sync += [o.payload.eq(skid), o.valid.eq(1), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += o.valid.eq(v)
                m.d.sync += [o.payload[j].eq(y_row[j]) for j in range(N)]
        with m.Elif(v & en):  # o is held: the step's row waits in the skid
            m.d.sync += [skid[j].eq(y_row[j]) for j in range(N)]
            m.d.sync += skid_valid.eq(1)
        return m
class DCT2D(_Separable2D):
    """Forward 8x8 2-D DCT, bit-exact with ``actpack.codec.reference.dct2``.

    Input ``i``: one row of 8 pixels per transfer (``PixelRow``: signed 8-bit, +-127 in the
    codec; -128 is transformed correctly too), rows y = 0..7 of a block, blocks back to back.
    Output ``o``: one row of 8 coefficients per transfer (``CoefRow``: signed 12-bit; the forward
    transform never exceeds +-1023), coefficient rows v = 0..7 (vertical frequency), each with
    u = 0..7 (horizontal frequency) in lanes 0..7 — i.e. row-major ``reference.dct2`` order.
    With ``order="zigzag"`` the output rows are the block's zigzag scan rows instead (lane ``i``
    of row ``k`` is coefficient ``tables.ZIGZAG[8 k + i]``, the rows ``blockcode.Zigzag``
    would make), at the same cost and latency: the output transpose reads its cells in that
    order, so the engine needs no separate reorder buffer (``ORDERS``).

    Throughput: 8 values per cycle sustained (one row per cycle, no bubbles between blocks) while
    ``i`` is valid and ``o`` ready: each transpose has two banks, one filling while the other
    drains.

    Latency: ``LATENCY`` = 38 cycles from a row's input transfer to the transfer of the output
    row with the same index (unstalled): 8 stages a pass (7 adder levels, the rounding), two
    transposes of 10, the input and output registers.

    Backpressure: ``o.valid`` and ``o.payload`` are registers and never depend on ``o.ready``.
    One registered enable steps every stage; it drops the cycle after a row had to wait in the
    output skid register (``o`` held), and ``i.ready`` is that enable: a register. A stalled
    ``o`` stops the whole transform, which resumes without loss. Blocks are delimited by
    counting rows: the stream must carry whole blocks (a reset re-aligns it). There is no invalid
    input: every 8-bit value is transformed exactly.

    Resources: no multipliers; about 70 two-input adders a pass (``_Net``).
    """

    i: In(stream.Signature(PixelRow))
    o: Out(stream.Signature(CoefRow))

    ROW_MATRIX = DCT_MATRIX
    COL_MATRIX = DCT_MATRIX
    SHIFT_1 = spec.DCT_SHIFT_1
    SHIFT_2 = spec.DCT_SHIFT_2
    CLAMP = None
    COEF_OUT = True


class IDCT2D(_Separable2D):
    """Inverse 8x8 2-D DCT, bit-exact with ``actpack.codec.reference.idct2``.

    Input ``i``: one row of 8 dequantized coefficients per transfer (``CoefRow``: signed 12-bit;
    the dequantizer saturates to +-2047, and -2048 is transformed correctly too), coefficient
    rows v = 0..7, each with u = 0..7 in lanes 0..7 (the order ``DCT2D`` produces).
    Output ``o``: one row of 8 pixels per transfer (``PixelRow``), rows y = 0..7 with x = 0..7 in
    lanes, clamped to +-``spec.SFPR_MAX`` (127) exactly as the reference clamps.

    With ``order="zigzag"`` the input rows are the block's zigzag scan rows instead (lane ``i``
    of row ``k`` is coefficient ``tables.ZIGZAG[8 k + i]``, as ``BlockDecoder`` delivers them),
    and a reorder buffer like the transposes (two banks, the second shifting its outputs out)
    turns them into rows first, in place of a separate ``Unzigzag``.

    Throughput and backpressure: as ``DCT2D``. Latency: ``LATENCY`` = 39 cycles (``DCT2D``'s
    and one stage for the clamp); with ``order="zigzag"`` 49 (the reorder buffer's 10), an
    instance attribute.
    """

    i: In(stream.Signature(CoefRow))
    o: Out(stream.Signature(PixelRow))

    ROW_MATRIX = DCT_MATRIX.T
    COL_MATRIX = DCT_MATRIX.T
    SHIFT_1 = spec.IDCT_SHIFT_1
    SHIFT_2 = spec.IDCT_SHIFT_2
    CLAMP = spec.SFPR_MAX
    COEF_OUT = False
