"""Stage 2 of the data path: Sample -> Critique.

A critic backend (`backend.Backend`) writes the feedback; `server` serves it as the gRPC service
`ixt.v1.RewardModel`; `client.RewardClient` is how every other part of ixt-stream asks for
critiques. Backends: `verifier` (reasoning-gym scoring, rule-written critique), `null` (fixed
answer, for transport benchmarks), `llm.LLMBackend` over a text completer (`vllm`, `openai`,
`sglang`), and `hybrid` (verifier verdict, LLM-written critique), each built by name through
`registry.BACKENDS` (the built-ins' builders are in `builders`). `server.main` is the reward role.
"""
