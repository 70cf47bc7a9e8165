"""loramem: an inference server whose long-term memory is a set of LoRA knowledge modules.

The layers, and the rule between them, are in ARCHITECTURE.md: `core` (settings, registry, adapter
store, prompting, decoding) under `serving` (engines, adapters, routing, planning, generation) and
`trainer` (claim loop and job pipeline), which never import each other; `api` over serving; `cli`
on top. Nothing is imported here, so that a standalone worker loads no server.
"""
