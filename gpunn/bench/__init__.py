"""Benchmarks of gpunn: throughput per backend and batch size, against the GEMM limit and PyTorch.

Modules, one job each:

* :mod:`~gpunn.bench.timing` - warm-up, synchronised clock reads, repeats until the spread is
  small, interleaved timing of several callables.
* :mod:`~gpunn.bench.workload` - the models, the gpunn training step and inference, the bare
  GEMMs of a step.
* :mod:`~gpunn.bench.torch_ref` - the same model and optimizer in PyTorch (optional).
* :mod:`~gpunn.bench.memory` - peak host RSS and CuPy pool bytes.
* :mod:`~gpunn.bench.load` - how busy other processes kept the CPU while a point was timed.
* :mod:`~gpunn.bench.env` - the environment report (CPU, BLAS threads, GPU, versions).
* :mod:`~gpunn.bench.harness` - the sweep over models, batch sizes and backends.
* :mod:`~gpunn.bench.crossover` - the batch size where the GPU overtakes the CPU.
* :mod:`~gpunn.bench.results` - bench.json (its schema is documented there), bench.csv,
  bench.md; :mod:`~gpunn.bench.plot` - bench.png.
* :mod:`~gpunn.bench.cli` - the ``gpunn bench`` subcommand (``add_parser``, ``run``).

Nothing here imports PyTorch, matplotlib or CuPy until it is needed.
"""
