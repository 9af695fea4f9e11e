"""Test support shipped with the engine: :mod:`.fake_server`, a local OpenAI-compatible server
with deterministic replies and injected faults (tests and benchmarks run against it), and
:func:`.scripts.load_script`, which imports a ``train/`` or ``benchmarks/`` script by path."""
