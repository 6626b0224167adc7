"""Benchmarks, synthetic data and the real-table corpus: what measures the engine, beside it.

* :mod:`tasks.bench.common`: what every suite shares (running variants interleaved, the report,
  peak RSS, the examples they run on, comparing statistics);
* :mod:`tasks.bench.ingest`, :mod:`tasks.bench.validate`, :mod:`tasks.bench.training`,
  :mod:`tasks.bench.optimize`: ``tfpipe bench ingest|validate|input|train|optimize``, each
  against references measured in the same run;
* :mod:`tasks.bench.datagen`: ``tfpipe datagen``, synthetic tables of a known shape;
* :mod:`tasks.bench.corpus`: ``make corpus``, real public tables through the whole pipeline.

The engine never imports this package.
"""
