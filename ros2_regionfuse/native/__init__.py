"""Fused C kernels for the full-resolution steps of CPU inference (``kernels.c``), through ctypes.

The frame's full-resolution work is bound by memory traffic (docs/performance.md):
each torch or OpenCV operation reads and writes whole planes, and the fusion's
finest level alone took ~20 such passes. The kernels here do the same arithmetic
in one pass per level (fusion) or per frame (corrector):

* :func:`detail_energy`: mean |Laplacian detail| over blocks (the region network's inputs);
* :func:`fuse_level`: one level of the fusion's detail blending and reconstruction;
* :func:`corrector_full_resolution`: the corrector's full-resolution step;
* :func:`similarity`: the corrector's global similarity registration (one call per frame
  instead of ~100 small numpy/OpenCV calls);
* :func:`ecc_terms`: one iteration's normal equations of the registration's ECC refinement
  (``core/registration.py``; one pass instead of ~20 numpy reductions);
* :func:`luma_u8`, :func:`recolour_u8`: the 8-bit colour input and output steps.

``kernels.c`` is compiled on first use with the machine's C compiler (``$CC``,
else ``cc``; gcc or clang, ~1 s) into a cache directory
(``$REGIONFUSE_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/ros2_regionfuse`` or
``~/.cache/ros2_regionfuse``) under a name made from the source, the flags, the
compiler and the CPU's features, so a changed file or another machine gets its
own build. ``tools/bootstrap.sh`` builds it ahead (``python -m ros2_regionfuse.native``).
Nothing is downloaded. Without a compiler, or when the build fails,
:func:`load` returns None with the reason in :func:`status`, and the callers
keep their torch/OpenCV code (same results to float rounding, tested).

Arrays: float32, C-contiguous planes ``(H, W)`` (numpy); outputs are new arrays unless given.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name('kernels.c')
# -ffast-math lets gcc vectorise expf (glibc's libmvec) and reorder sums; the shared object is linked
# in a second step without it, so it does not carry the flush-to-zero start-up code of crtfastmath.
CFLAGS = ('-O3', '-march=native', '-ffast-math', '-fPIC', '-std=c11')
# GCC's generic tuning (what -march=native gives where GCC does not know the CPU's model) emulates
# AVX-512 gathers with scalar loads: the corrector's bilinear warps ran 1.6-1.9x slower on an Intel
# Xeon (docs/performance.md). GCC only; other compilers keep their own choice.
GCC_X86_FLAGS = ('-mtune-ctrl=use_gather',)
LDFLAGS = ('-shared', '-lm', '-pthread')

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status = 'not loaded'
_tried = False

_F = ctypes.POINTER(ctypes.c_float)
_I = ctypes.c_int
_IP = ctypes.POINTER(ctypes.c_int)
_D = ctypes.c_double
_DP = ctypes.POINTER(ctypes.c_double)
_U8 = ctypes.POINTER(ctypes.c_uint8)
_SIGNATURES = {
    'rf_detail_energy': (_F, _F, _I, _I, _I, _F),
    'rf_fuse_level': (_F, _F, _F, _F, _F, _I, _I, _F, _F, _I, _I, ctypes.c_float, _I, _F, _I),
    'rf_corrector_full': (_F, _I, _I, _I, _I, _F, _F, _F, _I, _I, _I, _F, _F, _F, _I),
    'rf_similarity': (_F, _F, _I, _I, _I, _IP, _IP, _F, _I, _D, _I, _D, _DP, _DP),
    'rf_luma_u8': (_U8, ctypes.c_long, ctypes.c_float, ctypes.c_float, ctypes.c_float, _F),
    'rf_recolour_u8': (_U8, _F, _F, ctypes.c_long, _I, ctypes.c_float, ctypes.c_float, _U8),
    'rf_ecc_terms': (_F, _I, _I, _I, _F, _I, _I, _I, _I, _F, _I, _DP, _DP, _DP, _DP),
    'rf_ecc_terms_affine': (_F, _I, _I, _I, _F, _I, _I, _I, _I, _D, _D, _D, _D, _D, _DP, _DP, _DP, _DP),
}


def cache_dir() -> Path:
    """Where built kernels are kept (created on demand; see the module docstring)."""
    env = os.environ.get('REGIONFUSE_NATIVE_CACHE')
    if env:
        return Path(env)
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'ros2_regionfuse'


def _compiler() -> str | None:
    cc = os.environ.get('CC') or 'cc'
    return shutil.which(cc)


def _cpu_features() -> str:
    """The CPU's feature flags (``-march=native`` builds are valid for these only)."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith(('flags', 'Features')):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, '--version'], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ''


def compile_flags(version: str) -> tuple[str, ...]:
    """Compiler flags for a compiler whose ``--version`` printed ``version``.

    Example:
        >>> gcc = compile_flags('gcc (Debian 12.2.0-14) 12.2.0')
        >>> gcc == CFLAGS + GCC_X86_FLAGS or platform.machine() != 'x86_64'
        True
        >>> compile_flags('Debian clang version 14.0.6') == CFLAGS
        True
    """
    first = version.splitlines()[0].lower() if version else ''
    is_gcc = ('gcc' in first or 'Free Software Foundation' in version) and 'clang' not in first
    if is_gcc and platform.machine().lower() in ('x86_64', 'amd64'):
        return CFLAGS + GCC_X86_FLAGS
    return CFLAGS


def _build_key(flags: tuple[str, ...], version: str) -> str:
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), ' '.join(flags + LDFLAGS).encode(), version.encode(),
                 _cpu_features().encode(), platform.machine().encode()):
        h.update(part)
        h.update(b'\0')
    return h.hexdigest()[:16]


def _build(cc: str, target: Path, flags: tuple[str, ...] = CFLAGS) -> None:
    """Compile ``kernels.c`` into ``target`` (atomically: a temporary file, then a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, so = Path(tmp) / 'kernels.o', Path(tmp) / target.name
        compile_ = [cc, *flags, '-c', str(SOURCE), '-o', str(obj)]
        for cmd in (compile_, [cc, str(obj), *LDFLAGS, '-o', str(so)]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed: {(r.stderr or r.stdout).strip()[:500]}")
        os.replace(so, target)


def load() -> ctypes.CDLL | None:
    """The kernels' library, built on first use; None when unavailable (reason: :func:`status`).

    Thread-safe; the build or the failure is attempted once per process.
    """
    global _lib, _status, _tried
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        try:
            if os.environ.get('REGIONFUSE_NATIVE', '1') == '0':
                raise RuntimeError('disabled by REGIONFUSE_NATIVE=0')
            cc = _compiler()
            if cc is None:
                raise RuntimeError(f"no C compiler ({os.environ.get('CC') or 'cc'} not found)")
            version = _compiler_version(cc)
            flags = compile_flags(version)
            target = cache_dir() / f'regionfuse_kernels-{_build_key(flags, version)}.so'
            built = False
            if not target.exists():
                _build(cc, target, flags)
                built = True
            lib = ctypes.CDLL(str(target))
            for name, args in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, ctypes.c_int
            _lib = lib
            _status = f"{'built' if built else 'loaded'} {target}"
            log.debug('native kernels: %s', _status)
        except Exception as e:   # noqa: BLE001 - any failure: the callers keep torch/OpenCV
            _lib = None
            _status = f'unavailable: {e}'
            log.warning('native kernels %s; using the torch/OpenCV code', _status)
        _tried = True
    return _lib


def available() -> bool:
    """Whether the kernels are loaded (builds them on first call)."""
    return load() is not None


def status() -> str:
    """``built <path>``, ``loaded <path>``, ``unavailable: <reason>`` or ``not loaded``."""
    return _status


def _reset_for_tests() -> None:
    """Forget the loaded library so the next :func:`load` builds or loads again (tests only)."""
    global _lib, _status, _tried
    with _lock:
        _lib, _status, _tried = None, 'not loaded', False


def _ptr(a: np.ndarray) -> ctypes._Pointer:
    return a.ctypes.data_as(_F)


def _plane(a: np.ndarray, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        raise ValueError(f'{name}: expected a C-contiguous float32 array, got {a.dtype} '
                         f"{'contiguous' if a.flags.c_contiguous else 'strided'}")
    if shape is not None and a.shape != shape:
        raise ValueError(f'{name}: expected shape {shape}, got {a.shape}')
    return a


def _lib_or_raise() -> ctypes.CDLL:
    lib = load()
    if lib is None:
        raise RuntimeError(f'native kernels {_status}')
    return lib


def _check(rc: int, name: str) -> None:
    if rc != 0:
        raise MemoryError(f'{name}: could not allocate its row buffers')


def detail_energy(g: np.ndarray, g1: np.ndarray, f: int) -> np.ndarray:
    """Mean absolute Laplacian detail of a level over ``f x f`` blocks.

    Args:
        g: ``(H, W)`` Gaussian pyramid level (H, W even and multiples of ``f``).
        g1: ``(H/2, W/2)`` the next level.
        f: block size (>= 1).

    Returns:
        ``(H/f, W/f)`` float32: ``F.avg_pool2d((g - up(g1)).abs(), f)``, ``up`` bilinear x2
        (``align_corners=False``); equal to ~1e-7.
    """
    h, w = g.shape
    _plane(g, 'g')
    _plane(g1, 'g1', (h // 2, w // 2))
    if f < 1 or h % f or w % f or h % 2 or w % 2:
        raise ValueError(f'detail_energy: size {h}x{w} must be even and a multiple of f={f}')
    out = np.empty((h // f, w // f), np.float32)
    _check(_lib_or_raise().rf_detail_energy(_ptr(g), _ptr(g1), h, w, f, _ptr(out)), 'rf_detail_energy')
    return out


def fuse_level(gt: np.ndarray, gy: np.ndarray, gt1: np.ndarray, gy1: np.ndarray, x1: np.ndarray,
               bias: np.ndarray, gain: np.ndarray, temperature: float, clamp: bool,
               out: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """One level of the fusion's detail blending and reconstruction, in one pass.

    With ``up`` bilinear upsampling (``align_corners=False``) and ``box`` the 3x3 mean
    with zero padding::

        dT, dY = gt - up(gt1), gy - up(gy1)
        s = sigmoid(temperature * (box|dT| - box|dY|) / (box|dT| + box|dY| + 1e-3) + up(bias))
        out = up(x1) + up(gain) * (dY + s * (dT - dY))      # clamped to [0, 1] with clamp

    Args:
        gt, gy: ``(H, W)`` thermal and visible Gaussian level (H, W even).
        gt1, gy1, x1: ``(H/2, W/2)`` their next level and the coarser levels' fused reconstruction.
        bias, gain: ``(hn, wn)`` selection bias (logits) and detail gain at the network level.
        temperature: the band's selection sharpness ``k`` (> 0).
        clamp: clamp the result to [0, 1] (the finest level).
        out: ``(H, W)`` float32 array to write into (default: a new one).
        threads: split the rows over this many threads (at most 8; the same values).

    Returns:
        ``(H, W)`` float32, the reconstruction up to this level.
    """
    h, w = gt.shape
    for a, name in ((gt, 'gt'), (gy, 'gy')):
        _plane(a, name, (h, w))
    for a, name in ((gt1, 'gt1'), (gy1, 'gy1'), (x1, 'x1')):
        _plane(a, name, (h // 2, w // 2))
    _plane(bias, 'bias')
    _plane(gain, 'gain', bias.shape)
    if h % 2 or w % 2:
        raise ValueError(f'fuse_level: size {h}x{w} must be even')
    out = np.empty((h, w), np.float32) if out is None else _plane(out, 'out', (h, w))
    hn, wn = bias.shape
    rc = _lib_or_raise().rf_fuse_level(_ptr(gt), _ptr(gy), _ptr(gt1), _ptr(gy1), _ptr(x1), h, w,
                                       _ptr(bias), _ptr(gain), hn, wn, float(temperature),
                                       int(bool(clamp)), _ptr(out), int(threads))
    _check(rc, 'rf_fuse_level')
    return out


def corrector_full_resolution(low: np.ndarray, padded_hw: tuple[int, int], fused: np.ndarray,
                              visible: np.ndarray | None, thermal: np.ndarray | None, refuse: bool,
                              threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The corrector's full-resolution step for one frame (see ``models.corrector.full_resolution``).

    Args:
        low: ``(5, h, w)`` finest fields on the padded grid: flow x, y (full-resolution
            pixels), M, gain, bias.
        padded_hw: ``(Hp, Wp)`` the padded frame size the fields cover.
        fused, visible, thermal: ``(H, W)`` planes in [0, 1], ``H <= Hp``, ``W <= Wp``
            (``visible`` for ``retain``, ``thermal`` for ``refuse``).
        refuse: the ``refuse`` output (``F + gain * (warp_M(T) - T) + bias``); else ``retain``
            (``warp_M(F) + gain * (Y - warp_M(Y)) + bias``).
        threads: split the rows over this many threads (at most 8; the same values).

    Returns:
        ``(image (H, W) in [0, 1], M (H, W), flow (2, H, W) pixels)``, new float32 arrays.
        Exact bilinear sampling (as ``grid_sample``), so closer to the torch step than OpenCV's
        ``remap`` (positions quantised to 1/32 px).
    """
    h, w = fused.shape
    hp, wp = int(padded_hw[0]), int(padded_hw[1])
    _plane(low, 'low')
    if low.ndim != 3 or low.shape[0] != 5:
        raise ValueError(f'low: expected (5, h, w), got {low.shape}')
    if h > hp or w > wp:
        raise ValueError(f'padded size {hp}x{wp} smaller than the image {h}x{w}')
    _plane(fused, 'fused')
    other = thermal if refuse else visible
    if other is None:
        raise ValueError(f"corrector_full_resolution: {'thermal' if refuse else 'visible'} image missing")
    _plane(other, 'thermal' if refuse else 'visible', (h, w))
    out, m, flow = (np.empty((h, w), np.float32), np.empty((h, w), np.float32),
                    np.empty((2, h, w), np.float32))
    vis_p = _ptr(other) if not refuse else None
    th_p = _ptr(other) if refuse else None
    rc = _lib_or_raise().rf_corrector_full(_ptr(low), low.shape[1], low.shape[2], hp, wp, _ptr(fused),
                                           vis_p, th_p, h, w, int(bool(refuse)), _ptr(out), _ptr(m),
                                           _ptr(flow), int(threads))
    _check(rc, 'rf_corrector_full')
    return out, m, flow


def similarity(visible: np.ndarray, thermal: np.ndarray, factors: list[int], iters: list[int],
               taps: list[float], damping: float, search: int, margin: float) -> tuple[np.ndarray, float]:
    """Similarity parameters registering ``thermal`` to ``visible`` and their confidence.

    The solver of ``models.global_align.estimate_similarity`` (see its module docstring) in one
    call: block-mean pooling, edge descriptors, translation search at the coarsest level,
    inverse-compositional Gauss-Newton iterations per level, the confidence at the finest.
    Sampling is exact bilinear (as ``grid_sample``), so it agrees with the torch solver more
    closely than the OpenCV one (``cv2.warpAffine`` quantises positions to 1/32 cell).

    Args:
        visible, thermal: ``(H, W)`` float32 planes in [0, 1].
        factors: downsampling factor per level, coarse to fine (each a multiple of the last;
            every level at least 3x3 cells), as ``GlobalAlignConfig.factors``.
        iters: Gauss-Newton iterations per level (same length).
        taps: the descriptor blur's Gaussian taps (odd count up to 31, i.e. sigma <= 7.5 cells;
            empty or one tap: no blur).
        damping: Levenberg-Marquardt damping relative to the diagonal (>= 0).
        search: translation search radius in cells of the coarsest level (0: none).
        margin: border band left out of the measure (fraction of each side, [0, 0.5)).

    Returns:
        ``(params (4,) float64: tx, ty (px), a (scale - 1), b (rad), gain)``.
    """
    _plane(visible, 'visible')
    _plane(thermal, 'thermal', visible.shape)
    big, bigw = visible.shape
    nlev = len(factors)
    if nlev < 1 or len(iters) != nlev:
        raise ValueError(f'similarity: {nlev} factors and {len(iters)} iteration counts')
    fine = factors[-1]
    if fine < 1 or any(f % fine for f in factors) or min(big, bigw) // max(factors) < 3:
        raise ValueError(f'similarity: factors {list(factors)} do not fit a {big}x{bigw} image '
                         '(each a multiple of the last, every level at least 3x3 cells)')
    if (len(taps) % 2 == 0 and len(taps) > 0) or len(taps) > 31:
        raise ValueError(f'similarity: {len(taps)} blur taps (need an odd count up to 31)')
    if not 0.0 <= margin < 0.5 or damping < 0 or search < 0 or min(iters) < 0:
        raise ValueError(f'similarity: margin {margin}, damping {damping}, search {search}, iters {iters}')
    fa = (ctypes.c_int * nlev)(*factors)
    it = (ctypes.c_int * nlev)(*iters)
    tp = np.ascontiguousarray(taps if len(taps) else [1.0], np.float32)
    params = np.zeros(4, np.float64)
    gain = np.zeros(1, np.float64)
    rc = _lib_or_raise().rf_similarity(_ptr(visible), _ptr(thermal), big, bigw, nlev, fa, it, _ptr(tp),
                                       len(tp), float(damping), int(search), float(margin),
                                       params.ctypes.data_as(_DP), gain.ctypes.data_as(_DP))
    if rc == -2:   # the checks above should have caught it
        raise ValueError(f'similarity: invalid arguments for a {big}x{bigw} image: factors {list(factors)}')
    _check(rc, 'rf_similarity')
    return params, float(gain[0])


def _rgb8(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or not a.flags.c_contiguous:
        raise ValueError(f'{name}: expected a C-contiguous (H, W, 3) uint8 array, got {a.dtype} {a.shape}')
    return a


def luma_u8(rgb: np.ndarray, weights: tuple[float, float, float]) -> np.ndarray:
    """Luminance of 8-bit RGB: ``(H, W)`` float32 ``sum(weights * rgb)`` (weights per 8-bit unit).

    Args:
        rgb: ``(H, W, 3)`` uint8, C-contiguous.
        weights: ``(kr, kg, kb)``, e.g. BT.601 divided by 255 for a result in [0, 1].
    """
    h, w, _ = _rgb8(rgb, 'rgb').shape
    y = np.empty((h, w), np.float32)
    _lib_or_raise().rf_luma_u8(rgb.ctypes.data_as(_U8), h * w, *(float(k) for k in weights), _ptr(y))
    return y


def recolour_u8(rgb: np.ndarray, y: np.ndarray, y_old: np.ndarray,
                bounds: tuple[float, float] | None = None) -> np.ndarray:
    """The output colour step: every 8-bit channel moves by the luminance change.

    With ``bounds = (lo, hi)``, ``y`` is first mapped to ``clip((y - lo) / (hi - lo), 0, 1)``
    (the output contrast); then ``out = saturate(round(rgb + 255 (y - y_old)))``, rounding half
    to even, in one pass.

    Args:
        rgb: ``(H, W, 3)`` uint8, C-contiguous.
        y, y_old: ``(H, W)`` float32: the new luminance and the one of ``rgb``, in [0, 1].
        bounds: the contrast mapping, or None for none.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    h, w, _ = _rgb8(rgb, 'rgb').shape
    _plane(y, 'y', (h, w))
    _plane(y_old, 'y_old', (h, w))
    lo, scale = 0.0, 1.0
    if bounds is not None:
        lo, hi = bounds
        if not hi > lo:
            raise ValueError(f'recolour_u8: bounds {bounds} need hi > lo')
        scale = 1.0 / (hi - lo)
    out = np.empty_like(rgb)
    _lib_or_raise().rf_recolour_u8(rgb.ctypes.data_as(_U8), _ptr(y), _ptr(y_old), h * w,
                                   int(bounds is not None), float(lo), float(scale), out.ctypes.data_as(_U8))
    return out


def main() -> int:
    """``python -m ros2_regionfuse.native``: build (or find) the kernels and print where; 1 if unavailable."""
    ok = available()
    print(f'ros2_regionfuse native kernels: {status()}')
    return 0 if ok else 1


def ecc_terms(warped: np.ndarray, ref: np.ndarray, inner: tuple[slice, slice], jac: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float] | None:
    """One ECC iteration's terms of ``registration.refine_global`` (None: kernels unavailable).

    Args:
        warped: ``(lh, lw, c)`` float32, the thermal descriptor mapped by the current estimate.
        ref: ``(hi, wi, c)`` float32, the visible descriptor over the inner cells, zero mean per channel.
        inner: the inner cells' ``(rows, cols)`` slices of the level (step 1).
        jac: ``(n, 2, hi, wi)`` float32 Jacobian maps, or None for the statistics alone.

    Returns:
        ``(hess (n, n), gw (n,), gr (n,), ww, rw)``: with ``u = J^T grad(warped)``,
        ``hess = sum u u^T``, ``gw = sum u (warped - mean)``, ``gr = sum u ref``,
        ``ww = sum (warped - mean)^2``, ``rw = sum ref warped`` (float64).

    Raises:
        ValueError: shapes that do not fit.
    """
    lib = load()
    if lib is None:
        return None
    lh, lw, c = warped.shape
    ys, xs = inner
    hi, wi = ys.stop - ys.start, xs.stop - xs.start
    n = 0 if jac is None else jac.shape[0]
    for a, name in ((warped, 'warped'), (ref, 'ref')) + (((jac, 'jac'),) if jac is not None else ()):
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            raise ValueError(f'ecc_terms: {name} must be C-contiguous float32')
    if ref.shape != (hi, wi, c) or (jac is not None and jac.shape[1:] != (2, hi, wi)):
        raise ValueError(f'ecc_terms: ref {ref.shape} / jac {None if jac is None else jac.shape} do not '
                         f'fit {hi}x{wi} inner cells of {c} channels')
    hess = np.zeros((max(n, 1), max(n, 1)))
    gw, gr, stats = np.zeros(max(n, 1)), np.zeros(max(n, 1)), np.zeros(2)
    dp = ctypes.POINTER(ctypes.c_double)
    jp = _ptr(jac) if jac is not None else _ptr(ref)
    rc = lib.rf_ecc_terms(_ptr(warped), lh, lw, c, _ptr(ref), ys.start, xs.start, hi, wi, jp, n,
                          hess.ctypes.data_as(dp), gw.ctypes.data_as(dp), gr.ctypes.data_as(dp),
                          stats.ctypes.data_as(dp))
    if rc != 0:
        raise ValueError(f'ecc_terms: the kernel rejected the shapes (code {rc})')
    return hess[:n, :n], gw[:n], gr[:n], float(stats[0]), float(stats[1])


def ecc_terms_affine(warped: np.ndarray, ref: np.ndarray, inner: tuple[slice, slice],
                     coords: tuple[float, float, float, float, float]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float] | None:
    """:func:`ecc_terms` for the affine model, from moments (no Jacobian maps; None: kernels unavailable).

    Args:
        warped, ref, inner: as :func:`ecc_terms`.
        coords: ``(u0, du, v0, dv, s)``: the inner cell ``(i, j)`` has centred coordinates
            ``(u0 + du j, v0 + dv i)``; ``s`` converts centred units to cells. The affine
            Jacobian maps are then ``s (u, v, 1, 0, 0, 0)`` (x) and ``s (0, 0, 0, u, v, 1)`` (y).

    Returns:
        ``(hess (6, 6), gw (6,), gr (6,), ww, rw)``.
    """
    lib = load()
    if lib is None:
        return None
    lh, lw, c = warped.shape
    ys, xs = inner
    hi, wi = ys.stop - ys.start, xs.stop - xs.start
    for a, name in ((warped, 'warped'), (ref, 'ref')):
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            raise ValueError(f'ecc_terms_affine: {name} must be C-contiguous float32')
    if ref.shape != (hi, wi, c):
        raise ValueError(f'ecc_terms_affine: ref {ref.shape} does not fit {hi}x{wi} inner cells '
                         f'of {c} channels')
    hess, gw, gr, stats = np.zeros((6, 6)), np.zeros(6), np.zeros(6), np.zeros(2)
    dp = ctypes.POINTER(ctypes.c_double)
    u0, du, v0, dv, s = (float(v) for v in coords)
    rc = lib.rf_ecc_terms_affine(_ptr(warped), lh, lw, c, _ptr(ref), ys.start, xs.start, hi, wi, u0, du, v0,
                                 dv, s, hess.ctypes.data_as(dp), gw.ctypes.data_as(dp), gr.ctypes.data_as(dp),
                                 stats.ctypes.data_as(dp))
    if rc != 0:
        raise ValueError(f'ecc_terms_affine: the kernel rejected the shapes (code {rc})')
    return hess, gw, gr, float(stats[0]), float(stats[1])
