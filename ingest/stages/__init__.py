"""The ingest stages, each a small class with its own state, driven by `ingest.runner.Runner`:

    read    item -> Entry: the file's bytes and its document id          (ReadStage, per item)
    cache   Entry -> its vector, when the cache or the index knows it    (CacheStage.lookup, per item)
    decode  Entries -> uint8 crops, in worker processes                  (DecodeStage, per chunk)
    encode  Entries -> L2-normalised vectors, batched                    (EncodeStage, per batch)
    cache   encoded Entries -> the embedding cache, fsynced              (CacheStage, per batch)
    write   Entries -> documents upserted into the index                 (WriteStage, per batch)
    save    the index made durable every N written batches               (Checkpoint)

A stage reports an item it cannot handle as data (a reason "code: detail"), never by ending the
run: the runner records it in the summary and goes on with the others.
"""
