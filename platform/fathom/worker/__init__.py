"""fathom.worker: everything that runs the model for the engine (torch, Ray): the model runner
and sampler, KV-cache budgeting, the in-process and Ray executors with their rank workers, the
engine core process, and the factory that composes them (`create_engine`, `start_async_engine`)."""
