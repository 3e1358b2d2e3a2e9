"""Data: the on-disk format, sources, built-in datasets and the Grain input pipeline.

    records         ArrayRecord + TFDS metadata: writer (atomic, resumable) and reader
    sources         ml-4m's layouts: image folders, pre-tokenized webdataset tar shards
    ml4m_import     ml-4m tar shards -> our format (tools/import_ml4m_shards.py)
    scenes          procedural 3-D scenes, ray-cast in numpy
    scenes_dataset  the built-in `scenes` dataset (tools/build_scenes.py)
    image_stats     ml-4m metadata and colour palettes of an image
    synthetic       synthetic pre-tokenized 4M-7 data (benchmarks, tests)
    transforms      per-example crop, token-grid and RGB preparation
    pipeline        the Grain pipeline: mixture -> crop -> tokenize -> mask -> global batches
    errors          DataError (file, record, field) and the skipped-record counter
"""
