"""ixt-stream: online Introspective Training (IXT) of LLMs.

Data path, one package per stage:
  sample/     vLLM engine -> Sample (stamped with its weight version)
  critique/   Sample -> Critique, via the gRPC reward-model service
  condition/  (Sample, Critique) -> ConditionedSample: [feedback][data], loss on data only
  batch/      ConditionedSamples -> token-budget batches (the single tensor boundary)
  update/     IXT loss and the DeepSpeed learner
  weights/    new weights learner -> generators, same names both ends; one module per transport

The processes (reward, learner, orchestrator, generators) are listed in `roles.py`; docs/architecture.md
draws the data path with the message on each edge and says where to add a backend, mode, transport
or role.
"""

__version__ = "0.1.0"
