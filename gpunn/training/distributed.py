"""Data-parallel training over MPI (mpi4py), with NCCL between GPUs: communicators and fit's helper.

Several processes (ranks), started by ``mpiexec``, train one model together: each takes its
shard of every global batch, the gradients are summed across ranks with one all-reduce per step,
and every rank applies the same optimizer step, so all ranks hold the same weights throughout.
The networking is MPI's (through mpi4py) or NCCL's (through ``cupy.cuda.nccl``); gpunn adds
none of its own.

A :class:`Communicator` has ``rank``, ``size``, ``allreduce_sum(buffer)``, ``allreduce_max``,
``bcast(buffer)`` and ``barrier()``; collectives work in place on contiguous NumPy or CuPy
arrays and return the buffer. Implementations:

* :class:`SingleProcess`: one process, every collective a no-op.
* :class:`MPICommunicator`: MPI through mpi4py. CuPy buffers are copied to a page-locked host
  buffer, reduced there and copied back, unless CUDA-aware MPI is switched on
  (``cuda_aware=True`` or ``GPUNN_CUDA_AWARE_MPI=1``), in which case MPI reads device memory
  directly after the CUDA stream has been synchronised (MPI does not follow CUDA streams).
* :class:`NCCLCommunicator`: ``cupy.cuda.nccl`` on the current CUDA stream, with the NCCL
  unique id broadcast over MPI; host buffers still go through MPI.

:func:`get_communicator` picks NCCL when every rank has its own GPU and NCCL loads everywhere,
else MPI (``GPUNN_COMM=mpi|nccl`` forces one). It also divides the machine's cores among the
ranks that share them (:func:`divide_cores`): each rank's BLAS and OpenMP pools get
``cores // ranks`` threads (``GPUNN_THREADS_PER_RANK=N`` sets N instead), because ranks that
each start one thread per core oversubscribe the machine many times over. Run a job with
``python -m mpi4py`` so that an exception on one rank aborts the whole job instead of leaving
the others waiting forever::

    mpiexec -n 4 python -m mpi4py -m gpunn train --distributed --batch-size 256 ...

See docs/distributed.md for the method and its guarantees.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import warnings
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy

from gpunn.backend import (
    Backend,
    _import_cupy,
    _parse_spec,
    _probe_cupy,
    device_of,
    get_backend,
    namespace,
)
from gpunn.training.callbacks import Callback, ModelCheckpoint

__all__ = [
    "COMM_ENV",
    "CUDA_AWARE_ENV",
    "Communicator",
    "DataParallel",
    "DriftError",
    "THREADS_ENV",
    "MPICommunicator",
    "NCCLCommunicator",
    "SingleProcess",
    "choose_kind",
    "device_spec_for_rank",
    "divide_cores",
    "get_communicator",
    "limit_threads",
    "local_rank",
    "rank_backend",
    "shard_bounds",
    "sharing_ranks",
]

COMM_ENV = "GPUNN_COMM"  # auto (default), mpi or nccl
CUDA_AWARE_ENV = "GPUNN_CUDA_AWARE_MPI"  # 1: hand CuPy buffers to MPI directly
THREADS_ENV = "GPUNN_THREADS_PER_RANK"  # N: BLAS/OpenMP threads per rank; unset or auto: divide
KINDS = ("auto", "mpi", "nccl")
INSTALL_HINT = "pip install 'gpunn[mpi]' (mpi4py and MPICH), or mpi4py built on your cluster's MPI"

#: ranks count as drifted apart when a parameter checksum differs across them by more than
#: this share of the parameters' L1 norm. Ranks apply identical updates to identical sums, so
#: on one kind of hardware they agree bit for bit; the margin only allows for last-bit
#: differences between unlike machines, and is far below what a lost update produces.
DRIFT_RTOL = 1e-6


class DriftError(RuntimeError):
    """The ranks of a data-parallel run no longer hold the same weights."""


# --------------------------------------------------------------------------------------------
# Communicators
# --------------------------------------------------------------------------------------------


class Communicator:
    """The collectives data-parallel training needs; subclasses implement them.

    Every collective must be called by all ranks in the same order. Buffers are contiguous
    NumPy or CuPy arrays, changed in place and returned.
    """

    kind = "base"

    def __init__(self) -> None:
        self.rank = 0
        self.size = 1
        self.local_rank = 0  # rank among the processes on this machine
        self.reason = ""  # why this kind of communicator was chosen
        self.threads: int | None = None  # BLAS threads per rank set by get_communicator

    def allreduce_sum(self, buffer: Any) -> Any:
        """Replace ``buffer`` on every rank by the element-wise sum over all ranks."""
        raise NotImplementedError

    def allreduce_max(self, buffer: Any) -> Any:
        """Replace ``buffer`` on every rank by the element-wise maximum over all ranks."""
        raise NotImplementedError

    def bcast(self, buffer: Any, root: int = 0) -> Any:
        """Overwrite ``buffer`` on every rank with rank ``root``'s."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Return only when every rank has called ``barrier`` (and its device work is done)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SingleProcess(Communicator):
    """One process and no MPI: every collective leaves the buffer as it is."""

    kind = "single"

    def allreduce_sum(self, buffer: Any) -> Any:
        return buffer

    def allreduce_max(self, buffer: Any) -> Any:
        return buffer

    def bcast(self, buffer: Any, root: int = 0) -> Any:
        return buffer

    def barrier(self) -> None:
        pass


class MPICommunicator(Communicator):
    """Collectives through mpi4py on ``mpi_comm`` (default ``MPI.COMM_WORLD``).

    ``xp`` is the array module of the device buffers (CuPy), used for stream synchronisation
    and page-locked staging memory; it is found from the buffer when not given.
    """

    kind = "mpi"

    def __init__(
        self, mpi_comm: Any = None, *, xp: Any = None, cuda_aware: bool | None = None
    ) -> None:
        super().__init__()
        self.MPI = _mpi()
        self.comm = self.MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_rank = local_rank(self.comm)
        self.xp = xp
        self.cuda_aware = _env_flag(CUDA_AWARE_ENV) if cuda_aware is None else bool(cuda_aware)
        self._staging: dict[tuple[str, tuple[int, ...]], numpy.ndarray] = {}

    def allreduce_sum(self, buffer: Any) -> Any:
        return self._collective(buffer, lambda b: self.comm.Allreduce(self.MPI.IN_PLACE, b))

    def allreduce_max(self, buffer: Any) -> Any:
        op = self.MPI.MAX
        return self._collective(buffer, lambda b: self.comm.Allreduce(self.MPI.IN_PLACE, b, op))

    def bcast(self, buffer: Any, root: int = 0) -> Any:
        return self._collective(buffer, lambda b: self.comm.Bcast(b, root=root))

    def barrier(self) -> None:
        self.comm.Barrier()

    def _collective(self, buffer: Any, run: Any) -> Any:
        """Run the MPI call ``run`` on ``buffer``, or on a host copy of a device buffer."""
        _check_contiguous(buffer)
        if isinstance(buffer, numpy.ndarray):
            run(buffer)
            return buffer
        xp = self.xp if self.xp is not None else namespace(buffer)
        with device_of(buffer):  # the stream and the copies of the buffer's own GPU
            # MPI knows nothing of CUDA streams: let the kernels that write the buffer finish.
            # This also completes the previous collective's upload from the staging buffer
            # (below), before get() overwrites that buffer.
            xp.cuda.get_current_stream().synchronize()
            if self.cuda_aware:
                run(buffer)  # mpi4py passes the device pointer (__cuda_array_interface__) to MPI
                return buffer
            host = self._host_buffer(buffer, xp)
            buffer.get(out=host)  # waits for the copy: host holds the values when it returns
            run(host)
            # From page-locked memory this upload is asynchronous: it is queued on the stream,
            # so later kernels see the reduced values, but it may still be reading `host` when
            # set() returns. Nothing writes `host` before the synchronize() at the top of the
            # next collective, which is what makes reusing the staging buffer safe.
            buffer.set(host)
        return buffer

    def _host_buffer(self, buffer: Any, xp: Any) -> numpy.ndarray:
        """A page-locked host array shaped like ``buffer``, kept for the next step's copies."""
        key = (numpy.dtype(buffer.dtype).str, tuple(buffer.shape))
        host = self._staging.get(key)
        if host is None:
            memory = xp.cuda.alloc_pinned_memory(max(buffer.nbytes, 1))
            host = numpy.ndarray(buffer.shape, dtype=buffer.dtype, buffer=memory)
            self._staging[key] = host
        return host


class NCCLCommunicator(Communicator):
    """GPU buffers reduced by NCCL on the current CUDA stream; host buffers and barriers by MPI.

    NCCL calls are queued on the stream after the kernels that computed the buffer, so no
    synchronisation is needed before them. NCCL needs one GPU per rank: two ranks on one GPU
    are refused by NCCL itself ("Duplicate GPU detected"), which :func:`choose_kind` avoids.
    ``nccl`` replaces ``cupy.cuda.nccl`` (tests pass a stand-in).
    """

    kind = "nccl"

    def __init__(self, mpi_comm: Any, backend: Backend, *, nccl: Any = None) -> None:
        super().__init__()
        self.mpi = MPICommunicator(mpi_comm, xp=backend.xp)
        self.rank, self.size, self.local_rank = self.mpi.rank, self.mpi.size, self.mpi.local_rank
        self.backend, self.xp, self.device = backend, backend.xp, backend.device
        self.nccl = nccl if nccl is not None else _nccl_module(backend.xp)
        if not getattr(self.nccl, "available", True):
            raise RuntimeError("NCCL is not available: its library failed to load")
        self.dtypes = {
            "float32": self.nccl.NCCL_FLOAT32,
            "float64": self.nccl.NCCL_FLOAT64,
            "int32": self.nccl.NCCL_INT32,
            "int64": self.nccl.NCCL_INT64,
        }
        uid = self.nccl.get_unique_id() if self.rank == 0 else None
        uid = self.mpi.comm.bcast(uid, root=0)  # NCCL's rendezvous address travels over MPI
        with backend.activate():  # the communicator belongs to the current device
            self.comm = self.nccl.NcclCommunicator(self.size, uid, self.rank)

    def allreduce_sum(self, buffer: Any) -> Any:
        return self._reduce(buffer, self.nccl.NCCL_SUM, self.mpi.allreduce_sum)

    def allreduce_max(self, buffer: Any) -> Any:
        return self._reduce(buffer, self.nccl.NCCL_MAX, self.mpi.allreduce_max)

    def _reduce(self, buffer: Any, op: int, host_fallback: Any) -> Any:
        if isinstance(buffer, numpy.ndarray):
            return host_fallback(buffer)
        ptr, count, dtype = self._describe(buffer)
        with self.backend.activate():  # queued on this GPU's current stream
            self.comm.allReduce(ptr, ptr, count, dtype, op, self._stream())
        return buffer

    def bcast(self, buffer: Any, root: int = 0) -> Any:
        if isinstance(buffer, numpy.ndarray):
            return self.mpi.bcast(buffer, root)
        ptr, count, dtype = self._describe(buffer)
        with self.backend.activate():
            self.comm.bcast(ptr, count, dtype, root, self._stream())
        return buffer

    def barrier(self) -> None:
        with self.backend.activate():  # queued NCCL work is part of "done"
            self.xp.cuda.get_current_stream().synchronize()
        self.mpi.barrier()

    def _describe(self, buffer: Any) -> tuple[int, int, int]:
        """(device pointer, element count, NCCL data type) of a contiguous device buffer."""
        _check_contiguous(buffer)
        name = numpy.dtype(buffer.dtype).name
        if name not in self.dtypes:
            raise ValueError(f"NCCL collectives take {sorted(self.dtypes)} buffers, not {name}")
        where = getattr(buffer.data, "device_id", self.device)
        if where != self.device:  # NCCL would read another GPU's memory as if it were its own
            raise ValueError(
                f"this NCCL communicator serves GPU {self.device}; the buffer is on GPU {where}"
            )
        return buffer.data.ptr, buffer.size, self.dtypes[name]

    def _stream(self) -> int:
        return self.xp.cuda.get_current_stream().ptr


def _check_contiguous(buffer: Any) -> None:
    if not buffer.flags.c_contiguous:
        raise ValueError("collectives need a C-contiguous buffer (e.g. model.flat_grads)")


# --------------------------------------------------------------------------------------------
# Choosing a communicator and a device
# --------------------------------------------------------------------------------------------


def choose_kind(requested: str, ranks: Sequence[tuple[str, str | None, bool]]) -> tuple[str, str]:
    """``(kind, why)`` for a job whose rank i reported ``ranks[i] = (host, gpu, nccl_loads)``.

    ``gpu`` identifies rank i's GPU on its host (None on the CPU). ``"auto"`` gives
    ``"single"`` for one process, ``"nccl"`` when every rank has a GPU of its own and NCCL
    loads everywhere, ``"mpi"`` otherwise; ``"mpi"`` and ``"nccl"`` force a kind, and an
    impossible ``"nccl"`` raises RuntimeError saying why.
    """
    if requested not in KINDS:
        raise ValueError(f"communicator kind must be one of {KINDS}, got {requested!r}")
    if requested == "mpi":
        return "mpi", "MPI was asked for"
    if requested == "auto" and len(ranks) == 1:
        return "single", "one process"
    problem = _nccl_problem(ranks)
    if problem is None:
        return "nccl", "every rank has its own GPU and NCCL"
    if requested == "nccl":
        raise RuntimeError(f"cannot use NCCL: {problem}")
    return "mpi", f"MPI, because {problem}"


def _nccl_problem(ranks: Sequence[tuple[str, str | None, bool]]) -> str | None:
    """Why NCCL cannot serve these ranks, or None when it can."""
    owner: dict[tuple[str, str], int] = {}
    for rank, (host, gpu, nccl_loads) in enumerate(ranks):
        if gpu is None:
            return f"rank {rank} (on {host}) has no GPU"
        if not nccl_loads:
            return f"NCCL does not load on rank {rank} (on {host}); pip install nvidia-nccl-cu13"
        if (host, gpu) in owner:
            return (
                f"ranks {owner[host, gpu]} and {rank} share GPU {gpu} on {host} "
                "(NCCL needs one GPU per rank)"
            )
        owner[host, gpu] = rank
    return None


def get_communicator(
    backend: Backend | str | None = None,
    kind: str | None = None,
    *,
    cuda_aware: bool | None = None,
    mpi_comm: Any = None,
    threads_per_rank: int | str | None = None,
) -> Communicator:
    """The communicator for this rank of the job started by ``mpiexec`` (collective: every rank
    must call it). ``backend`` is this rank's backend (see :func:`rank_backend`); ``kind`` is
    ``"auto"`` (default, or ``$GPUNN_COMM``), ``"mpi"`` or ``"nccl"``.

    In a job of more than one rank it also limits this rank's BLAS/OpenMP threads
    (:func:`limit_threads`): ``threads_per_rank`` (default ``$GPUNN_THREADS_PER_RANK``, else
    ``"auto"``) is a positive integer or ``"auto"``, the machine's cores divided among the
    ranks that share them; the count set is ``communicator.threads``.

    Needs mpi4py (RuntimeError with the install command otherwise). A job of one process gets
    :class:`SingleProcess` under ``"auto"``.
    """
    _parse_threads(threads_per_rank)  # a bad value is refused before any collective
    kind = kind or os.environ.get(COMM_ENV, "").strip().lower() or "auto"
    if kind not in KINDS:
        raise ValueError(f"communicator kind must be one of {KINDS}, got {kind!r}")
    MPI = _mpi()
    comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
    backend = get_backend(backend) if backend is not None else None
    chosen, why = choose_kind(kind, comm.allgather(_rank_info(backend)))
    if chosen == "single":
        result: Communicator = SingleProcess()
    elif chosen == "nccl":
        assert backend is not None  # choose_kind gives "nccl" only when every rank has a GPU
        result = NCCLCommunicator(comm, backend)
    else:
        xp = backend.xp if backend is not None and backend.is_gpu else None
        result = MPICommunicator(comm, xp=xp, cuda_aware=cuda_aware)
    result.reason = why
    if comm.Get_size() > 1:
        result.threads = limit_threads(comm, threads_per_rank)
    if result.size > 1 and result.rank == 0 and "mpi4py.run" not in sys.modules:
        warnings.warn(
            "gpunn: this MPI job was not started with 'python -m mpi4py': an exception on one "
            "rank can leave the others waiting forever instead of ending the job",
            RuntimeWarning,
            stacklevel=2,
        )
    return result


def _rank_info(backend: Backend | None) -> tuple[str, str | None, bool]:
    """(host name, GPU identity or None, whether NCCL loads) of this process."""
    host = socket.gethostname()
    if backend is None or not backend.is_gpu:
        return host, None, False
    try:  # the PCI bus id names the physical GPU whatever CUDA_VISIBLE_DEVICES says
        gpu = str(backend.xp.cuda.Device(backend.device).pci_bus_id)
    except Exception:
        gpu = str(backend.device)
    try:
        loads = bool(_nccl_module(backend.xp).available)
    except Exception:
        loads = False
    return host, gpu, loads


def _nccl_module(xp: Any) -> Any:
    """``cupy.cuda.nccl`` (imported on first use: CuPy does not load it by itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CuPy warns when libnccl is missing; we report it
        return importlib.import_module(f"{xp.__name__}.cuda.nccl")


def local_rank(mpi_comm: Any = None) -> int:
    """This process's rank among the processes of the job on the same machine."""
    MPI = _mpi()
    comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        return node.Get_rank()
    finally:
        node.Free()


# --------------------------------------------------------------------------------------------
# Threads: the ranks on one machine share its cores
# --------------------------------------------------------------------------------------------


def divide_cores(cpus: int, sharing: int, current: int | None = None) -> int:
    """BLAS threads for a rank that may run on ``cpus`` cores shared with ``sharing`` ranks
    (itself included): ``cpus // sharing``, at least 1, and never more than ``current`` (a
    smaller limit the user set, e.g. with ``OPENBLAS_NUM_THREADS``, stands).

    One thread per core and rank: BLAS libraries keep idle threads spinning, so two ranks of
    N threads on N cores slow each other down by far more than 2x.
    """
    threads = max(1, cpus // max(1, sharing))
    return min(threads, current) if current else threads


def sharing_ranks(mine: set[int], node: Sequence[set[int]]) -> int:
    """How many of the machine's ranks (CPU sets ``node``, this rank's among them) may run on
    a core of this rank's CPU set ``mine``. Ranks that the launcher bound to cores of their own
    share none, so each keeps all of its cores; unbound ranks all share every core."""
    return max(1, sum(1 for cpus in node if cpus & mine))


def _parse_threads(value: int | str | None) -> int | None:
    """A positive thread count, or None for "auto" (divide the cores)."""
    source = "threads_per_rank" if value is not None else THREADS_ENV
    value = os.environ.get(THREADS_ENV, "") if value is None else value
    text = str(value).strip().lower()
    if text in ("", "auto"):
        return None
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ValueError(f"{source} must be a positive integer or 'auto', got {value!r}")
    return int(text)


def _cpu_set() -> set[int]:
    """The CPUs this process may run on (its affinity, which a launcher's binding narrows)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return set(range(os.cpu_count() or 1))


def limit_threads(mpi_comm: Any, threads_per_rank: int | str | None = None) -> int | None:
    """Set this rank's BLAS and OpenMP thread pools (collective over ``mpi_comm``) and return
    the number of BLAS threads set, or None when threadpoolctl is not installed (rank 0 warns).

    ``threads_per_rank`` (default ``$GPUNN_THREADS_PER_RANK``) is a positive integer, set as it
    is, or ``"auto"``: :func:`divide_cores` of this rank's CPUs among the ranks on the machine
    that share them (:func:`sharing_ranks`, from every rank's CPU set on this machine).
    """
    wanted = _parse_threads(threads_per_rank)
    MPI = _mpi()
    node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED, key=mpi_comm.Get_rank())
    try:
        mine = _cpu_set()
        sharing = sharing_ranks(mine, [set(c) for c in node.allgather(sorted(mine))])
    finally:
        node.Free()
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        if mpi_comm.Get_rank() == 0:
            warnings.warn(
                f"gpunn: threadpoolctl is not installed, so each of the {sharing} ranks on this "
                "machine may start one BLAS thread per core and oversubscribe it; "
                "pip install threadpoolctl (or set OMP_NUM_THREADS and OPENBLAS_NUM_THREADS)",
                RuntimeWarning,
                stacklevel=3,
            )
        return None
    pools = threadpool_info()
    limits = {
        p["prefix"]: wanted or divide_cores(len(mine), sharing, p["num_threads"]) for p in pools
    }
    if limits:
        threadpool_limits(limits=limits)  # stays in force: this call is not used as a context
    blas = [limits[p["prefix"]] for p in pools if p["user_api"] == "blas"]
    return max(blas) if blas else (wanted or divide_cores(len(mine), sharing))


def device_spec_for_rank(spec: str, local: int, device_count: int) -> str:
    """The backend spec a rank uses: ``"auto"``/``"cupy"`` become ``cupy:<local % count>``.

    ``"numpy"`` and an explicit ``"cupy:N"`` are kept; with no GPU the spec is returned as it
    is, so ``"auto"`` falls back to NumPy and ``"cupy"`` fails with the reason.
    """
    name, _ = _parse_spec(spec)
    explicit = ":" in spec
    if name == "numpy" or explicit or device_count < 1:
        return spec
    return f"cupy:{local % device_count}"


def rank_backend(
    spec: str | None = None, *, tf32: bool | None = None, mpi_comm: Any = None
) -> Backend:
    """This rank's backend: GPU ``local_rank % device_count`` for ``"auto"``/``"cupy"``.

    ``spec`` None reads ``$GPUNN_BACKEND`` (else ``"auto"``), as :func:`get_backend` does.
    """
    spec = spec or os.environ.get("GPUNN_BACKEND", "").strip() or "auto"
    chosen = device_spec_for_rank(spec, local_rank(mpi_comm), _gpu_count())
    auto = spec.strip().lower() == "auto"
    if auto and chosen != spec and not _probe_cupy(_parse_spec(chosen)[1])[0]:
        chosen = "auto"  # that GPU is not usable: fall back (with a warning) as "auto" does
    return get_backend(chosen, tf32=tf32)


def _gpu_count() -> int:
    """CUDA devices visible here, 0 without CuPy (counting creates no CUDA context)."""
    try:
        return int(_import_cupy().cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def _mpi() -> Any:
    """mpi4py's ``MPI`` module; RuntimeError saying what to install when it cannot be loaded."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError(f"distributed training needs mpi4py: {INSTALL_HINT} ({exc})") from None
    except RuntimeError as exc:  # mpi4py is there, but the MPI library it needs is not
        raise RuntimeError(
            f"mpi4py is installed but cannot load an MPI library ({exc}); install one: "
            f"{INSTALL_HINT}"
        ) from None
    return MPI


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------------------------
# Data-parallel fit
# --------------------------------------------------------------------------------------------


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of an n-row global batch that ``rank`` of ``size`` takes.

    Contiguous and balanced as ``numpy.array_split``: the first ``n % size`` ranks take one
    row more. A rank gets no rows when n < size (only in a short last batch).
    """
    q, extra = divmod(n, size)
    lo = rank * q + min(rank, extra)
    return lo, lo + q + (rank < extra)


class DataParallel:
    """What :func:`gpunn.training.fit` does differently on one rank of a data-parallel run.

    Constructing it checks that every rank trains the same problem and broadcasts rank 0's
    weights (and BatchNorm running statistics). Then, per step, :meth:`average_gradients` turns
    this rank's shard-mean gradients into the global-batch mean; per epoch, :meth:`end_epoch`
    averages the ranks' BatchNorm running statistics (:meth:`average_state`), reads the epoch's
    statistics (with a parameter checksum, in the same single host read), makes them global
    and stops the run if the ranks' weights differ.
    """

    def __init__(
        self, comm: Communicator, model: Any, n: int, batch_size: int, same: dict[str, Any]
    ) -> None:
        self.comm, self.rank, self.size = comm, comm.rank, comm.size
        sizes = {
            "number of samples": n,
            "number of parameters": model.flat_params.size,
            "number of running statistics": model.flat_state.size,
        }
        self._check_same(sizes | {"batch_size": batch_size} | same)
        starts = range(0, n, batch_size)
        self.global_sizes = numpy.array([min(batch_size, n - s) for s in starts], dtype=numpy.int64)
        bounds = [shard_bounds(int(g), self.rank, self.size) for g in self.global_sizes]
        self.local_sizes = numpy.array([hi - lo for lo, hi in bounds], dtype=numpy.int64)
        self.offsets = numpy.concatenate([[0], numpy.cumsum(self.local_sizes)])
        # positions in the epoch's order of this rank's rows, batch after batch: order[positions]
        self.positions = numpy.concatenate(
            [numpy.arange(s + lo, s + hi) for s, (lo, hi) in zip(starts, bounds, strict=True)]
        ).astype(numpy.int64)
        self.scale = self.local_sizes / self.global_sizes  # shard mean -> share of batch mean
        comm.bcast(model.flat_params, root=0)  # start from rank 0's weights, once
        if model.flat_state.size:
            comm.bcast(model.flat_state, root=0)  # ... and its running statistics

    def _check_same(self, values: dict[str, Any]) -> None:
        """Refuse to start unless every rank has the same values (one tiny all-reduce): ranks
        with different data or settings would train different models, or wait forever."""
        mine = numpy.array([_code(v) for v in values.values()], dtype=numpy.float64)
        both = self.comm.allreduce_max(numpy.concatenate([mine, -mine]))
        hi, lo = both[: len(mine)], -both[len(mine) :]
        for name, a, b in zip(values, lo, hi, strict=True):
            if a != b:
                raise ValueError(
                    f"the ranks disagree on the {name} (from {a:.0f} to {b:.0f}): every rank "
                    "must call fit with the same data, model and arguments"
                )

    def batches(self, data: Any, order: Any) -> Iterator[tuple[Any, Any]]:
        """This rank's shard of each global batch, on the device (possibly 0 rows)."""
        local = order[self.positions]  # host indices
        pieces = zip(self.offsets[:-1].tolist(), self.local_sizes.tolist(), strict=True)
        if data.on_device:  # the data set lives on the device: gather there
            idx = data.backend.asarray(local)
            for o, s in pieces:
                rows = idx[o : o + s]
                yield data.xp.take(data.X, rows, axis=0), data.xp.take(data.y, rows, axis=0)
        else:  # too large for the device: gather on the host, one transfer per shard
            for o, s in pieces:
                rows = local[o : o + s]
                yield (
                    data.backend.asarray(data.X[rows], dtype=data.dtype),
                    data.backend.asarray(data.y[rows], dtype=data.y_dtype),
                )

    def global_batch_size(self, b: int) -> int:
        return int(self.global_sizes[b])

    def average_gradients(self, model: Any, b: int) -> None:
        """Make ``flat_grads`` the mean gradient over global batch b, the same on every rank.

        Each rank holds the mean over its n_r rows; scaling by n_r / n and summing over ranks
        gives the mean over all n. Every rank knows every n_r (the split is fixed), so the
        counts need not travel: one all-reduce of the flat buffer per step.
        """
        grads = model.flat_grads
        grads *= float(self.scale[b])
        self.comm.allreduce_sum(grads)

    def average_state(self, model: Any) -> None:
        """Replace every rank's BatchNorm running statistics (``model.flat_state``) by their
        mean over the ranks: one all-reduce, once per epoch.

        During an epoch each rank's BatchNorm layers normalise with the statistics of the
        rank's own shard and update their running mean and variance from them, so the ranks'
        running statistics drift apart. Averaging them at the end of every epoch, before
        validation, callbacks and checkpoints see them, gives every rank the same values. An
        exponential moving average is linear in what it averages, so the result is the
        moving average of the ranks' mean shard statistics: for the running mean, the mean of
        the global batch when every shard has as many rows; for the running variance, the
        mean of the shard variances (which leaves out the spread between shard means).
        """
        state = model.flat_state
        if state.size:
            self.comm.allreduce_sum(state)
            state /= self.size

    def end_epoch(self, model: Any, stats: Any) -> numpy.ndarray:
        """The epoch's (2, batches) statistics for the global batches, as host arrays.

        ``stats`` holds this rank's shard-mean losses and correct counts on the device. They
        are read together with a parameter checksum in one transfer, summed over ranks on the
        host, and the checksum's spread is checked (:class:`DriftError`). The ranks' BatchNorm
        running statistics are averaged first (:meth:`average_state`).
        """
        self.average_state(model)
        xp, p = model.xp, model.flat_params
        checksum = xp.stack([p.sum(dtype=xp.float64), xp.abs(p).sum(dtype=xp.float64)])
        host = model.backend.to_numpy(xp.concatenate([stats.ravel(), checksum]))
        local = host[:-2].reshape(2, -1).copy()
        local[0] *= self.local_sizes  # shard mean loss -> shard loss sum
        total = self.comm.allreduce_sum(local)
        total[0] /= self.global_sizes  # -> mean loss of each global batch
        self._check_drift(host[-2:])
        return total

    def _check_drift(self, checksum: numpy.ndarray) -> None:
        both = self.comm.allreduce_max(numpy.concatenate([checksum, -checksum]))
        hi, lo = both[:2], -both[2:]
        spread = float(numpy.max(hi - lo))
        if spread > DRIFT_RTOL * max(float(hi[1]), 1.0):
            raise DriftError(
                f"the ranks' weights have drifted apart (parameter sums range from {lo[0]:.10g} "
                f"to {hi[0]:.10g}, L1 norms from {lo[1]:.10g} to {hi[1]:.10g}): something changed "
                "the weights on some ranks only, so training stopped"
            )

    def wrap_callbacks(self, callbacks: Sequence[Callback]) -> list[Callback]:
        """Callbacks that write files run on rank 0 only, followed by a barrier."""
        return [_RankZero(cb, self.comm) if _writes_files(cb) else cb for cb in callbacks]


def _writes_files(cb: Callback) -> bool:
    return bool(getattr(cb, "rank_zero_only", isinstance(cb, ModelCheckpoint)))


def _code(value: Any) -> int:
    """A number standing for a setting, equal on ranks whose settings are equal (an integer
    stands for itself; anything else, such as a tuple seed, for a checksum of its repr)."""
    if isinstance(value, (int, numpy.integer)) and abs(int(value)) < 2**52:
        return int(value)
    return zlib.crc32(repr(value).encode())


class _RankZero(Callback):
    """Runs ``inner`` on rank 0 only; after each epoch every rank waits for it (barrier), so a
    checkpoint is complete on disk before any rank goes on."""

    def __init__(self, inner: Callback, comm: Communicator) -> None:
        self.inner, self.comm = inner, comm
        self.active = comm.rank == 0

    def set_context(self, context: dict[str, Any]) -> None:
        super().set_context(context)
        if self.active:
            self.inner.set_context(context)

    def on_train_begin(self) -> None:
        if self.active:
            self.inner.on_train_begin()

    def on_epoch_begin(self, epoch: int) -> None:
        if self.active:
            self.inner.on_epoch_begin(epoch)

    def on_batch_begin(self, batch: int) -> None:
        if self.active:
            self.inner.on_batch_begin(batch)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.active:
            self.inner.on_epoch_end(epoch, logs)
        self.comm.barrier()

    def on_train_end(self) -> None:
        if self.active:
            self.inner.on_train_end()
        self.comm.barrier()
